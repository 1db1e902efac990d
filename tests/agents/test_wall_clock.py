"""A wall-clock cap that cuts training short is said loudly and recorded; the step budget is the default."""

from __future__ import annotations

import logging
from dataclasses import replace

from shaping.agents.train import train_ppo, wall_clock_spent
from shaping.config import TrainConfig
from shaping.sim.scenarios import load_scenario
from tests.agents.test_train_smoke import TINY_PPO, TINY_TRAIN


def test_no_cap_by_default():
    assert TrainConfig().max_wall_s is None
    assert not wall_clock_spent(TrainConfig(), 1e9, 1, 10)


def test_a_stop_before_the_planned_iterations_is_a_warning(caplog):
    cap = TrainConfig(max_wall_s=5.0)
    with caplog.at_level(logging.WARNING, logger="shaping.agents.train"):
        assert not wall_clock_spent(cap, 4.9, 3, 10)
        assert wall_clock_spent(cap, 5.0, 10, 10)  # the last iteration anyway: nothing was cut
        assert not caplog.records
        assert wall_clock_spent(cap, 5.0, 3, 10, "ppo training")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "WALL-CLOCK STOP: ppo training ran 3 of its 10 planned iterations" in caplog.messages[0]


def test_training_records_a_wall_clock_stop(caplog):
    train = replace(TINY_TRAIN, max_wall_s=1e-9)
    with caplog.at_level(logging.WARNING, logger="shaping.agents.train"):
        res = train_ppo([load_scenario("small_congested")], TINY_PPO, train, tenant=1)
    assert res.iterations == 1 and res.planned_iterations == 3 and res.wall_clock_stopped
    assert any("WALL-CLOCK STOP" in m for m in caplog.messages)
