"""The universal model as a Policy: it drives a controlled tenant that fits its layout, refuses one that does not."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from shaping.agents.global_model import get_weights, make_model, save_weights
from shaping.agents.universal import UniversalLayout
from shaping.evaluation import evaluate_policy
from shaping.policies import PolicyInput, make_policy
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import Simulator


@pytest.fixture
def weights(tmp_path):
    layout = UniversalLayout()
    path = save_weights(tmp_path / "universal.npz", get_weights(make_model(layout, (16,), seed=3)))
    (tmp_path / "summary.json").write_text(json.dumps({"layout": layout.to_config(), "hidden_sizes": [16]}))
    return path


def test_it_drives_only_the_controlled_tenants_and_their_envelope(weights):
    sc = load_scenario("small_congested")
    policy = make_policy(f"universal:{weights}")
    r = evaluate_policy(sc, policy, seeds=2, steps=4, controlled=["studio"])
    assert r.controlled == ["studio"] and 0.0 <= r.sla_violation_rate <= 1.0
    sim = Simulator(sc, batch_size=2, seed=0)
    inp = PolicyInput(0, sim.tensors, sim.state, None, (1,))
    first = policy(inp)  # warm-up: no observation yet
    out = sim.step(first)
    plans = policy(PolicyInput(1, sim.tensors, sim.state, out, (1,)))
    n = len(sim.tensors.specs[1].classes)
    # The studio's paths are within its two paths; the padded classes are untouched.
    assert int(plans.path[:, 1, :n].max()) < 2
    assert torch.equal(plans.rate_mbps[:, 1, n:], first.rate_mbps[:, 1, n:])


def test_a_tenant_that_does_not_fit_the_layout_is_refused(weights):
    sc = load_scenario("default")
    extra = [dataclasses.replace(c, name=f"{c.name}2") for c in sc.tenants[0].classes]
    sc.tenants[0].classes = sc.tenants[0].classes + extra  # eight classes: the layout holds four
    with pytest.raises(ValueError, match="layout holds"):
        evaluate_policy(sc, make_policy(f"universal:{weights}"), seeds=1, steps=2, controlled=["gameco"])
