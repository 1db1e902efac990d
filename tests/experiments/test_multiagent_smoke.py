"""Tiny-budget run of the multi-agent entry point: both modes, the report against the baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.multiagent import MultiAgentConfig, register

ROOT = Path(__file__).resolve().parents[2]


def test_config_composes_with_every_baseline_including_all_premium():
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("multiagent")
    conf = OmegaConf.to_object(cfg)
    assert isinstance(conf, MultiAgentConfig)
    assert conf.modes == ["independent", "shared"] and "greedy_premium" in conf.evaluation.baselines
    assert conf.train.max_wall_s is not None  # the default run is bounded


def test_multiagent_entry_point(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "scenario=small_congested", "agent.total_timesteps=16", "agent.num_steps=4", "agent.hidden_sizes=[16]",
        "agent.update_epochs=1", "agent.num_minibatches=2", "train.num_envs=4", "train.eval_envs=2",
        "train.eval_steps=3", "train.progress=false", "evaluation.seeds=2", "evaluation.steps=4",
        f"hydra.run.dir={out}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.multiagent", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.md", "results.json", "multiagent.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "`ppo_shared`" in proc.stdout and "`greedy_premium`" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    policies = doc["policies"]
    assert list(policies) == ["fifo", "static_priority", "fair_share", "fq_codel", "greedy_premium",
                              "ppo_independent", "ppo_shared"]  # fmt: skip
    for r in policies.values():
        assert set(r["tenants"]) == {"shop", "studio"}
        assert 0.0 < r["jain_index"] <= 1.0 + 1e-6 and 0.0 <= r["sla_violation_rate"] <= 1.0
        assert r["total_utility"] == sum(t["reward"] for t in r["tenants"].values())
        assert all(0.0 <= t["sla_violation_rate"] <= 1.0 for t in r["tenants"].values())
    assert doc["train"]["independent"]["iterations"] == 1 and doc["train"]["shared"]["iterations"] == 1
    assert doc["best_baseline_by_utility"] in doc["settings"]["baselines"]
