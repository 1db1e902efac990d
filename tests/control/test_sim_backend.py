"""SimBackend: the simulator behind observe/apply gives the same measurements as the simulator itself."""

from __future__ import annotations

import pytest
import torch

from shaping.baselines import static_priority_plan
from shaping.control import SimBackend
from shaping.sim.tenant_view import MultiTenantSim


def test_applying_the_baseline_plan_reproduces_the_simulator(scenario):
    backend = SimBackend(scenario, "acme", seed=7)
    ref = MultiTenantSim(scenario, 1, "cpu", controlled=[])
    out = ref.reset(seed=7)
    first = backend.observe()
    backend.apply(static_priority_plan(backend.spec))  # acme's scenario policy: the reference's plan too
    view = ref.views[0]
    for step in range(4):
        m, _ = view.metrics(out)
        assert torch.allclose(first.metrics.delivered_mbps, m.delivered_mbps[0]), step
        assert torch.allclose(first.metrics.delay_p99_ms, m.delay_p99_ms[0]), step
        assert torch.allclose(first.obs, view.observe(out)[0]), step
        out = ref.step({})
        first = backend.observe()


def test_episodes_end_and_restart(scenario):
    backend = SimBackend(scenario, 0, seed=1, episode_steps=3)
    dones = [backend.observe().done for _ in range(8)]
    # warm-up (0), then steps 1, 2, 3 -> done at the third; the next observe is a new warm-up
    assert dones == [False, False, False, True, False, False, False, True]
    assert backend.steps == 8
    with pytest.raises(ValueError, match="episode_steps"):
        SimBackend(scenario, 0, episode_steps=0)
