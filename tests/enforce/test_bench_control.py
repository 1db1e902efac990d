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
    inference = out["inference"]
    assert inference["numpy_actor_act"]["same_as_torch"] is True
    for key in ("model_policy_decide", "model_policy_decide_new_plan", "actor_critic_act", "model_policy_decide_torch"):
        assert 0 < inference[key]["p50_ms"] <= inference[key]["p99_ms"]
    for key in ("loop", "loop_counters_only", "loop_exploring"):
        assert out[key]["iterations"] == 3 and out[key]["core_fraction"] > 0
    assert out["loop"]["adaptive_steps"] == 3
    assert set(out["targets"]) >= {"apply_p50_ms<=1", "apply_p99_ms<=3", "loop_core_fraction<=0.05"}
