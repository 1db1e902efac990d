"""Tiny-budget run of the SB3 example: PPO through the simulator's VecEnv, evaluated against a random policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_train_sb3_prints_ppo_and_random_and_saves_the_model(tmp_path):
    pytest.importorskip("stable_baselines3")
    overrides = [
        "scenario=small_congested", "num_envs=4", "n_steps=8", "batch_size=16", "n_epochs=1",
        "total_timesteps=64", "max_episode_steps=12", "eval_envs=2", "eval_steps=5", f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.train_sb3", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # stdout is the JSON document alone
    assert doc["env_steps"] == 64 and doc["num_envs"] == 4
    for side in ("ppo", "random"):
        assert set(doc[side]) == {"reward_per_step", "sla_violations_per_step"}
        assert doc[side]["sla_violations_per_step"] >= 0
    assert doc["reward_gain_over_random"] == pytest.approx(
        doc["ppo"]["reward_per_step"] - doc["random"]["reward_per_step"]
    )
    assert Path(doc["model"]).is_file() and Path(doc["vecnormalize"]).is_file()
