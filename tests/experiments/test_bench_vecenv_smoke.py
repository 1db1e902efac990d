"""Tiny-budget run of the interface benchmark: every rate in one JSON document, with the load average."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_vecenv_prints_every_rate():
    pytest.importorskip("stable_baselines3")
    args = [
        "--scenario", "small_congested", "--tenant", "studio", "--num-envs", "4", "--repeats", "1",
        "--min-seconds", "0.01", "--rollout", "16", "--rollouts", "1", "--batch-size", "8", "--dummy-envs", "2",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.bench_vecenv", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # stdout is the JSON document alone
    assert doc["num_envs"] == 4 and doc["threads"] == 1
    assert len(doc["loadavg_before"]) == 3 and len(doc["loadavg_after"]) == 3
    for key in ("single_env", "sim_b1", "vector_env", "vector_env_torch", "sb3_vec_env"):
        assert doc[key]["steps_per_s"] > 0
    assert doc["single_env"]["torch_calls_per_step"] > doc["sim_b1"]["torch_calls_per_step"] > 0
    for key in ("sb3_ppo", "sb3_ppo_batch", "sb3_ppo_dummy"):
        assert doc[key]["env_steps_per_run"] == 16
        assert doc[key]["learn_steps_per_s"] > 0 and doc[key]["collect_steps_per_s"] >= doc[key]["learn_steps_per_s"]
    assert doc["sb3_ppo_batch"]["ppo_kwargs"] == {"batch_size": 8}
