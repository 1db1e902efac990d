"""Simulator(replicas=N): N copies of the same seeds' randomness side by side (common random numbers)."""

from __future__ import annotations

import pytest
import torch

from shaping.policies import neighbour_plans
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import Simulator


def test_each_replica_runs_the_seeds_of_the_small_batch():
    scenario = load_scenario("small_congested")
    small = Simulator(scenario, batch_size=2, seed=7)
    tiled = Simulator(scenario, batch_size=6, seed=7, replicas=3)
    plans, aqm = neighbour_plans(small.tensors, scenario, 2)
    plans6, _ = neighbour_plans(tiled.tensors, scenario, 6)
    for _ in range(2):  # a reset draws the same start again
        small.reset(seed=11)
        tiled.reset(seed=11)
        for _ in range(8):
            a, b = small.step(plans, aqm).metrics, tiled.step(plans6, aqm).metrics
        for x, y in zip(a, b, strict=True):
            # The same draws; the arithmetic to an ulp or so (vectorised and scalar loops round differently).
            torch.testing.assert_close(y, x.repeat(3, 1, 1), rtol=1e-4, atol=1e-4)


def test_replicas_must_divide_the_batch():
    with pytest.raises(ValueError, match="multiple of replicas"):
        Simulator(load_scenario("small_congested"), batch_size=5, replicas=2)
