"""Tiny-budget run of the comparison entry point, as a user would start it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.compare import run_compare
from experiments.config import CompareConfig, OutputConfig
from shaping.policies import POLICY_KINDS
from shaping.sim.scenarios import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def _finite(doc: object) -> bool:
    if isinstance(doc, dict):
        return all(_finite(v) for v in doc.values())
    if isinstance(doc, list):
        return all(_finite(v) for v in doc)
    return not isinstance(doc, float) or math.isfinite(doc)


def test_compare_entry_point(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "steps=5", "seeds=2", "progress=false", f"hydra.run.dir={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.md", "results.json", "latency.png", "summary.png", "timeseries.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "| policy |" in proc.stdout and "`static_priority`" in proc.stdout

    doc = json.loads((out / "results.json").read_text())
    assert _finite(doc)
    assert doc["settings"]["steps"] == 5 and doc["settings"]["seeds"] == 2
    policies = doc["policies"]
    assert list(policies) == ["fifo", "static_priority", "fair_share", "fq_codel"]
    for r in policies.values():
        assert 0.0 <= r["sla_violation_rate"] <= 1.0
        assert 0.0 <= r["utilization"] <= 1.0 + 1e-6
        assert -10.0 < r["mean_reward"] < 2.5 + 1e-6  # at most throughput + latency + efficiency weights
        assert 0.0 < r["jain_throughput"] <= 1.0 + 1e-6
        assert set(r["apps"]) == {"gaming", "transactions", "video", "bulk", "web"}
        assert len(r["series"]["reward"]) == 5
    assert policies["static_priority"]["mean_reward"] > policies["fifo"]["mean_reward"]


def test_run_compare_function(tmp_path):
    cfg = CompareConfig(
        scenario=load_scenario("small_congested"),
        policies=["fifo", "greedy_premium"],
        seeds=1,
        steps=3,
        progress=False,
        output=OutputConfig(plots=False, print_table=False),
    )
    results = run_compare(cfg, tmp_path)
    assert list(results) == ["fifo", "greedy_premium"]
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.json").is_file()
    assert not (tmp_path / "latency.png").exists()


def test_compare_states_the_controlled_tenants(tmp_path):
    cfg = CompareConfig(
        scenario=load_scenario("small_congested"),
        policies=["fifo", "static_priority"],
        controlled=["studio"],
        seeds=1,
        steps=3,
        progress=False,
        output=OutputConfig(plots=False, print_table=False),
    )
    results = run_compare(cfg, tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["settings"]["controlled"] == ["studio"]
    assert doc["settings"]["neighbours"] == {"shop": "static_priority"}
    for name, row in doc["policies"].items():
        assert row["controlled"] == ["studio"] == results[name].controlled
        assert 0.0 <= row["neighbour_sla_violation_rate"] <= 1.0
    # The neighbour (shop) runs static_priority in both rows, so only studio's plans differ.
    md = (tmp_path / "results.md").read_text()
    assert "Every policy drives studio; the neighbours run their scenario policies in every row: shop" in md
    assert "neighbours' SLA violations" in md and "| policy | shop | studio* |" in md


def test_compare_refuses_tenants_a_policy_cannot_drive(tmp_path, monkeypatch):
    @dataclasses.dataclass
    class Narrow:
        name: str = "narrow"
        aqm: bool = False
        tenants: tuple[str, ...] = ("shop",)

        def __call__(self, inp: object) -> object:
            raise AssertionError("never evaluated")

    monkeypatch.setitem(POLICY_KINDS, "narrow", lambda arg: Narrow())
    cfg = CompareConfig(
        scenario=load_scenario("small_congested"), policies=["fifo", "narrow:x"], controlled=["studio"], seeds=1,
        steps=2, progress=False, output=OutputConfig(plots=False, print_table=False),
    )  # fmt: skip
    with pytest.raises(ValueError, match="controls only \\['shop'\\]"):
        run_compare(cfg, tmp_path)
