"""Tiny-budget run of the comparison entry point, as a user would start it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from experiments.compare import run_compare
from experiments.config import CompareConfig, OutputConfig
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
