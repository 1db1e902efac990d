"""Tiny-budget smoke runs of ``python -m experiments.bench_control_explore``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import bench_control_explore
from tests.enforce.conftest import need_root


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench_control_explore.os, "geteuid", lambda: 1000)
    assert bench_control_explore.main(["--steps", "1"]) == 2
    assert "needs root" in json.loads(capsys.readouterr().out)["error"]


def test_random_plans_change_every_field() -> None:
    spec = bench_control_explore.explore_spec(8)
    rng = np.random.default_rng(0)
    a, b = (bench_control_explore.random_plan(spec, rng) for _ in range(2))
    a.validate(spec)
    for field in ("rate_mbps", "priority", "dscp", "drop_prob", "path"):
        assert [getattr(c, field) for c in a.classes] != [getattr(c, field) for c in b.classes], field


@pytest.mark.root
def test_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    need_root()
    assert bench_control_explore.main(["--steps", "5", "--hz", "20", "--classes", "3", "--prefix", "fse-xsm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 5 and sum(out["modes"].values()) == 5
    assert 0 < out["step_ms"]["p50"] <= out["step_ms"]["p99"] <= out["step_ms"]["max"]
    assert out["apply_kinds"]["nft"] >= 1 and out["fast_htb_steps"] >= 1
