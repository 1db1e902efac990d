"""Tiny-budget run of the set policy's training entry point, and its model on a held-out scenario."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from shaping.evaluation import evaluate_policy
from shaping.policies import make_policy
from shaping.sim.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]


def _train_set(overrides: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "experiments.train_set", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_entry_point_trains_on_training_families_and_writes_a_model_the_benchmark_runs(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "families=[train_mixed,train_failover]", "scenarios_per_family=1", "num_envs=2", "ppo.total_timesteps=24",
        "ppo.num_steps=4", "ppo.update_epochs=1", "ppo.num_minibatches=1", "teacher.iterations=2",
        "teacher.kind=baseline", "teacher.pick_envs=1", "teacher.pick_steps=3", "evaluation.every=2",
        "evaluation.envs=1", "evaluation.steps=3", "model.d_model=16", "model.n_heads=2", "model.d_ff=16",
        "model.d_key=8", "progress=false", f"output_dir={out}",
    ]  # fmt: skip
    _train_set(overrides)
    for name in ("best.pt", "last.pt", "cloned.pt", "train.csv", "train.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "summary.json").read_text())
    scenarios = sorted(p.stem for p in (out / "scenarios").glob("*.yaml"))
    assert scenarios == ["train_failover_s0", "train_mixed_s0"]
    assert {t["task"].split("@")[1] for t in doc["tasks"]} == set(scenarios)
    assert all(t["teacher"] in {"static_priority", "fair_share", "fifo", "greedy_premium"} for t in doc["tasks"])
    planned = 24 // (2 * 4)
    assert doc["iterations"] == doc["planned_iterations"] == planned and not doc["stopped_early"]
    assert doc["env_steps"] == planned * 2 * 4 and doc["cloning"]["iterations"] == 2
    rows = list(csv.DictReader((out / "train.csv").open()))
    assert len(rows) == planned
    # The model drives a held-out scenario's tenants (other classes, paths and events than it trained on).
    heldout = load_suite("heldout")[0]
    result = evaluate_policy(heldout, make_policy(f"set:{doc['best']}"), seeds=1, steps=2)
    assert result.controlled


def test_searched_teachers_are_reported_with_their_rates_and_kept_in_the_cache(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "teachers"
    overrides = [
        "families=[train_mixed]", "scenarios_per_family=1", "num_envs=2", "ppo.total_timesteps=8",
        "ppo.num_steps=4", "ppo.update_epochs=1", "ppo.num_minibatches=1", "teacher.iterations=1",
        "teacher.pick_envs=1", "teacher.pick_steps=3", "teacher.kind=search", "teacher.search_generations=1",
        "teacher.search_population=4", "teacher.search_polish_rounds=1", f"teacher.search_cache={cache}",
        "evaluation.every=1",
        "evaluation.envs=1", "evaluation.steps=2", "model.d_model=16", "model.n_heads=2", "model.d_ff=16",
        "model.d_key=8", "progress=false", f"output_dir={out}",
    ]  # fmt: skip
    _train_set(overrides)
    doc = json.loads((out / "summary.json").read_text())
    assert doc["tasks"] and len(list(cache.glob("*.json"))) == len(doc["tasks"])
    for task in doc["tasks"]:
        assert task["teacher"].split(":")[0] in {"search", "baseline", "encoded"}
        assert 0.0 <= task["sla_violation_rate"] <= task["best_baseline_rate"] <= 1.0
