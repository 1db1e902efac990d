"""Tiny-budget run of the pretraining entry point, and its checkpoint in the comparison entry point's function."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.compare import run_compare
from experiments.config import CompareConfig, OutputConfig, PretrainConfig, register_configs
from shaping.config import PPOConfig
from shaping.sim.scenarios import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def _finite(doc: object) -> bool:
    if isinstance(doc, dict):
        return all(_finite(v) for v in doc.values())
    if isinstance(doc, list):
        return all(_finite(v) for v in doc)
    return not isinstance(doc, float) or math.isfinite(doc)


def test_pretrain_config_composes_with_its_budget_over_the_agent_defaults():
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("pretrain", overrides=["scenario=edge_gaming", "tenant=null", "train.seed=3"])
    conf = OmegaConf.to_object(cfg)
    assert isinstance(conf, PretrainConfig) and isinstance(conf.agent, PPOConfig)
    assert conf.scenario.name == "edge_gaming" and conf.train.seed == 3
    assert conf.agent.total_timesteps < PPOConfig().total_timesteps  # pretrain.yaml's 10-minute budget
    assert conf.agent.learning_rate == PPOConfig().learning_rate  # the rest from conf/agent/ppo.yaml


def test_pretrain_entry_point_then_compare(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "scenario=small_congested", "tenant=studio", "agent.total_timesteps=64", "agent.num_steps=8",
        "agent.hidden_sizes=[16]", "agent.update_epochs=1", "train.num_envs=4", "train.eval_every=1",
        "train.eval_envs=2", "train.eval_steps=3", "train.progress=false", "evaluation.seeds=2",
        "evaluation.steps=3", f"hydra.run.dir={out}",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.pretrain", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("best.pt", "last.pt", "train.csv", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len((out / "train.csv").read_text().splitlines()) == 1 + 2  # header, 64 / (4 x 8) iterations

    doc = json.loads((out / "summary.json").read_text())
    assert _finite(doc)
    assert doc["tenant"] == "studio" and doc["train"]["iterations"] == 2
    assert list(doc["policies"]) == ["static_priority", "fq_codel", "ppo"]
    assert doc["controlled"] == ["studio"]
    for r in doc["policies"].values():
        assert 0.0 <= r["sla_violation_rate"] <= 1.0 and 0.0 < r["utilization"] <= 1.0 + 1e-6
        assert r["tenant"]["name"] == "studio"
        assert r["controlled"] == ["studio"]  # like for like: every row drives studio alone
        assert 0.0 <= r["neighbour_sla_violation_rate"] <= 1.0
    assert doc["vs_best_baseline"]["baseline"] in ("static_priority", "fq_codel")
    assert "neighbour_sla_violation_delta" in doc["vs_best_baseline"]

    cfg = CompareConfig(
        scenario=load_scenario("small_congested"),
        policies=["static_priority", f"ppo:{out / 'best.pt'}"],
        seeds=1, steps=3, progress=False, output=OutputConfig(plots=False, print_table=False),
    )  # fmt: skip
    results = run_compare(cfg, tmp_path / "compare")
    assert list(results) == ["static_priority", f"ppo:{out / 'best.pt'}"]
    assert json.loads((tmp_path / "compare" / "results.json").read_text())


def test_pretrain_runs_on_a_fixed_thread_count_without_a_wall_clock_cap(tmp_path, monkeypatch):
    import torch

    import experiments.pretrain as pretrain

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        conf = OmegaConf.to_object(compose("pretrain", overrides=["torch_threads=3"]))
    assert isinstance(conf, PretrainConfig)
    assert conf.train.max_wall_s is None  # the step budget decides, not the machine's load
    seen: list[int] = []
    monkeypatch.setattr(pretrain, "_run_pretrain", lambda cfg, out: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    pretrain.run_pretrain(conf, tmp_path)
    assert seen == [3] and torch.get_num_threads() == before
