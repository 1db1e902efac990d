"""The reference arms give the same results in worker processes as in-process (same seeds, same budget)."""

from __future__ import annotations

import logging

import pytest

from experiments.fl_arms import run_arms
from shaping.agents.universal import TenantTask
from shaping.config import PPOConfig
from shaping.fed_settings import RunSettings

TINY = RunSettings(rounds=2, local_iterations=1, ppo=PPOConfig(num_steps=3, update_epochs=1, num_minibatches=1),
                   hidden_sizes=(8,), eval_envs=2, eval_steps=2,
                   tenants=(TenantTask("default", "gameco", 2), TenantTask("single_path", "office", 1)))  # fmt: skip


def _arm_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("arm ")]


@pytest.mark.slow
def test_arms_in_workers_equal_arms_in_process(caplog):
    caplog.set_level(logging.INFO, logger="experiments.fl_arms")
    here, wall_here = run_arms(TINY, local=True, central=True, baselines=["fifo"], workers=1)
    caplog.clear()
    there, wall_there = run_arms(TINY, local=True, central=True, baselines=["fifo"], workers=2)
    # From the workers too, each arm's start and finish (with its wall time) is logged while the arms run.
    lines = _arm_lines(caplog)
    for arm in ("local_only", "centralized", "baselines", "initial"):
        assert lines.index(f"arm {arm}: started") < lines.index(f"arm {arm}: finished in {wall_there[arm]:.1f} s")
    assert here == there
    assert [r["round"] for r in here["local_only"]] == [1, 2] and len(here["centralized"]) == 2
    assert set(here["baselines"]["fifo"]) == {"gameco@default", "office@single_path"}
    assert set(wall_here) == set(wall_there) == {"local_only", "centralized", "baselines", "initial"}
    # The initial model is what round 1 of every arm starts from, on the same seeds.
    assert set(here["initial"]) == {"gameco@default", "office@single_path"}


def test_arms_can_be_left_out(caplog):
    caplog.set_level(logging.INFO, logger="experiments.fl_arms")
    res, wall = run_arms(TINY, local=False, central=False, baselines=[], workers=1)
    assert set(res) == set(wall) == {"baselines", "initial"} and res["baselines"] == {}
    assert _arm_lines(caplog) == [
        "arm baselines: started", f"arm baselines: finished in {wall['baselines']:.1f} s",
        "arm initial: started", f"arm initial: finished in {wall['initial']:.1f} s",
    ]  # fmt: skip


def test_both_training_arms_follow_the_rounds_learning_rate_schedule(monkeypatch):
    from dataclasses import replace

    import experiments.fl_arms as arms
    from shaping.agents.local_train import LocalResult

    rates: dict[str, list[float]] = {"local": [], "central": []}

    def record(model, envs, iterations, cfg, **_):
        rates["central" if len(envs) > 1 else "local"].append(cfg.learning_rate)
        return LocalResult(num_examples=1, rollout_reward=0.0, optimizer_steps=0)

    monkeypatch.setattr(arms, "local_train", record)
    s = replace(TINY, anneal_lr=True)
    arms.local_only(s)
    arms.centralized(s)
    lr = s.ppo.learning_rate
    assert rates["local"] == [lr, lr, 0.5 * lr, 0.5 * lr]  # two tenants per round
    assert rates["central"] == [lr, 0.5 * lr]
