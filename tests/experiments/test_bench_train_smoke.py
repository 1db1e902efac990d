"""Tiny-budget run of the training benchmark: our PPO and SB3's to a low target, one JSON document."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_prints_times_to_target_and_the_speedup(tmp_path):
    pytest.importorskip("stable_baselines3")
    overrides = [
        "scenario=small_congested", "num_envs=2", "agent.num_steps=4", "agent.num_minibatches=2",
        "agent.update_epochs=1", "agent.hidden_sizes=[16]", "target_reward=-100", "eval_envs=1", "eval_steps=3",
        "max_wall_s=60", f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.bench_train", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # stdout is the JSON document alone
    assert doc["target_reward"] == -100 and doc["num_envs"] == 2
    for side in ("ours", "sb3"):
        r = doc[side]
        assert r["reached"] and r["iterations"] == 1  # any policy beats a target of -100 at the first evaluation
        assert 0 < r["time_to_target_s"] <= r["train_s"] and r["env_steps"] >= 8
    ratio = doc["sb3"]["time_to_target_s"] / doc["ours"]["time_to_target_s"]
    assert doc["speedup_time_to_target"] == pytest.approx(ratio)
    assert doc["speedup_is_lower_bound"] is False and isinstance(doc["meets_5x_target"], bool)
    assert doc["speedup_env_steps_per_s"] > 0


def test_unreached_target_gives_no_speedup(tmp_path):
    overrides = [
        "scenario=small_congested", "num_envs=2", "agent.num_steps=4", "agent.num_minibatches=2",
        "agent.update_epochs=1", "agent.hidden_sizes=[16]", "target_reward=100", "eval_envs=1", "eval_steps=3",
        "max_wall_s=0.01", "sb3=false", f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.bench_train", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["ours"]["reached"] is False and doc["ours"]["time_to_target_s"] is None
    assert "speedup_time_to_target" not in doc and "did not reach" in doc["note"]
