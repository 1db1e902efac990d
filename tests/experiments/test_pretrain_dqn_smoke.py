"""Tiny-budget run of the pretraining entry point with agent=dqn, evaluated on held-out scenarios too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.config import PretrainConfig, register_configs
from experiments.pretrain import heldout_mismatch
from shaping.config import DQNConfig
from shaping.sim.scenarios import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_agent_dqn_composes_to_a_dqn_config():
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("pretrain", overrides=["agent=dqn"])
    conf = OmegaConf.to_object(cfg)
    assert isinstance(conf, PretrainConfig) and isinstance(conf.agent, DQNConfig)
    assert conf.agent.buffer_size == DQNConfig().buffer_size  # from conf/agent/dqn.yaml
    assert conf.evaluation.heldout_scenarios  # the default run evaluates on scenarios it never trained on


def test_heldout_scenarios_hold_the_default_tenants_with_the_same_specs():
    default = load_scenario("default")
    for name in ("default_heldout_paths", "default_heldout_neighbours"):
        assert heldout_mismatch(load_scenario(name), "gameco", default) is None
    assert heldout_mismatch(load_scenario("default_heldout_paths"), "bank", default) is None
    assert "no tenant" in str(heldout_mismatch(load_scenario("default_heldout_neighbours"), "bank", default))
    assert "no tenant" in str(heldout_mismatch(load_scenario("small_congested"), "gameco", default))


def test_pretrain_dqn_entry_point_with_heldout_scenarios(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "agent=dqn", "agent.total_timesteps=32", "agent.learning_starts=8", "agent.batch_size=8",
        "agent.buffer_size=64", "agent.target_network_frequency=8", "agent.hidden_sizes=[16]", "train.num_envs=4",
        "train.eval_every=1", "train.eval_envs=2", "train.eval_steps=3", "train.progress=false", "evaluation.seeds=2",
        "evaluation.steps=3", "evaluation.heldout_scenarios=[default_heldout_neighbours,small_congested]",
        f"hydra.run.dir={out}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.pretrain", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("best.pt", "last.pt", "train.csv", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "summary.json").read_text())
    assert doc["agent"] == "dqn" and doc["train"]["iterations"] == 4
    assert list(doc["policies"]) == ["static_priority", "fq_codel", "dqn"]
    assert list(doc["heldout"]) == ["default_heldout_neighbours"]
    held = doc["heldout"]["default_heldout_neighbours"]
    assert list(held["policies"]) == ["static_priority", "fq_codel", "dqn"]
    assert held["vs_best_baseline"]["baseline"] in ("static_priority", "fq_codel")
    assert "no tenant 'gameco'" in doc["heldout_skipped"]["small_congested"]
