"""Tiny-budget smoke runs of ``python -m experiments.bench_control``."""

from __future__ import annotations

import json

import pytest

from experiments import bench_control
from tests.enforce.conftest import need_root


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench_control.os, "geteuid", lambda: 1000)
    assert bench_control.main(["--iters", "1"]) == 2
    assert "needs root" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.root
def test_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    need_root()
    assert bench_control.main(["--iters", "5", "--loop-iters", "3", "--classes", "4", "--prefix", "fse-bsm"]) == 0
    out = json.loads(capsys.readouterr().out)
    apply = out["apply"]
    assert apply["fast_path"]["verified_read_back"] is True
    for method in ("fast_path", "naive_pyroute2", "tc_subprocess_per_class", "tc_batch_subprocess"):
        assert 0 < apply[method]["p50_ms"] <= apply[method]["p99_ms"]
    assert out["inference"]["fused_numpy_act"]["same_actions_as_act"] is True
    assert out["loop"]["iterations"] == 3 and out["loop"]["core_fraction"] > 0
    assert set(out["targets"]) >= {"apply_p50_ms<=1", "apply_p99_ms<=3", "loop_core_fraction<=0.05"}
