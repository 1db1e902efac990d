"""``set:PATH`` as a Policy: saved weights drive any tenant of any scenario, whatever its classes and paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shaping.agents.set_policy import SetActorCritic, SetPolicyConfig, SetPolicyFormatError, save_set_policy
from shaping.evaluation import evaluate_policy
from shaping.policies import PolicyInput, make_policy
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import Simulator


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_set_policy(tmp_path / "set.pt", SetActorCritic(SetPolicyConfig(d_model=32, d_ff=64, d_key=16)))


@pytest.mark.parametrize("scenario", ["default", "single_path", "datacenter"])
def test_it_drives_every_tenant_of_any_scenario(weights: Path, scenario: str) -> None:
    sc = load_scenario(scenario)
    r = evaluate_policy(sc, make_policy(f"set:{weights}"), seeds=2, steps=3)
    assert len(r.controlled) == len(sc.tenants) and 0.0 <= r.sla_violation_rate <= 1.0


def test_it_writes_only_the_controlled_tenants_within_their_layout(weights: Path) -> None:
    sc = load_scenario("datacenter")
    policy = make_policy(f"set:{weights}")
    assert policy.name == f"set:{weights}" and getattr(policy, "tenants", "x") is None
    sim = Simulator(sc, batch_size=2, seed=0)
    first = policy(PolicyInput(0, sim.tensors, sim.state, None, (0, 6)))
    out = sim.step(first)
    plans = policy(PolicyInput(1, sim.tensors, sim.state, out, (0, 6)))
    n = len(sim.tensors.specs[6].classes)  # two classes, three paths
    assert int(plans.path[:, 6, :n].max()) < 3
    assert torch.equal(plans.rate_mbps[:, 6, n:], first.rate_mbps[:, 6, n:])
    assert torch.equal(plans.rate_mbps[:, 1], first.rate_mbps[:, 1])  # not controlled


def test_other_versions_are_refused_in_one_line(weights: Path, tmp_path: Path) -> None:
    payload = torch.load(weights, weights_only=True)
    payload["layout_version"] = 1
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(SetPolicyFormatError) as err:
        make_policy(f"set:{tmp_path / 'old.pt'}")
    assert "\n" not in str(err.value) and "layout 1" in str(err.value)
    with pytest.raises(FileNotFoundError):
        make_policy(f"set:{tmp_path / 'missing.pt'}")
