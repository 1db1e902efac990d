"""tuned_static as a policy: drives only the controlled tenants, runs wherever a policy reference does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shaping.evaluation import evaluate_policies, evaluate_policy
from shaping.policies import PolicyInput, bind_policy, make_policy, neighbour_plans
from shaping.sim.simulator import Simulator
from shaping.spec import stack_plans
from shaping.tuned import TunedPlanPolicy, TunedStaticPolicy, TuneSettings, load_or_tune
from tests.tuned.conftest import TINY

FEW = dataclasses.replace(TINY, generations=1)


def test_drives_only_the_controlled_tenants(tmp_path, scenario):
    policy = TunedStaticPolicy(tmp_path, FEW)
    with pytest.raises(RuntimeError, match="needs its scenario"):
        policy(PolicyInput(0, Simulator(scenario).tensors, Simulator(scenario).state, None))
    bound = bind_policy(policy, scenario, ["gamer"])
    assert isinstance(bound, TunedPlanPolicy) and bound.name == "tuned_static"
    tuned = load_or_tune(scenario, FEW, cache_dir=tmp_path)
    assert bound.aqm == tuned.final_aqm and bound.tenants == ("gamer",)
    sim = Simulator(scenario, batch_size=3)
    st = sim.tensors
    plans = bound(PolicyInput(0, st, sim.state, None, (0,)))
    theirs, _ = neighbour_plans(st, scenario, 3)
    mine = stack_plans([list(tuned.final_plans)], st.n_classes)
    for got, n, t in zip(plans, theirs, mine, strict=True):
        assert got.shape == (3, 2, st.n_classes)
        assert bool((got[:, 1] == n[:, 1]).all())  # the neighbour keeps its scenario plan
        assert bool((got[:, 0] == t[0, 0]).all())  # the controlled tenant runs the tuned plan


def test_make_policy_and_evaluate(tmp_path, scenario, monkeypatch):
    # The bare name tunes into the default cache directory, conf/tuned_static/ of the conf directory in use.
    (tmp_path / "scenario").mkdir()
    monkeypatch.setenv("FEDSHAPE_CONF", str(tmp_path))
    policy = make_policy("tuned_static")
    assert isinstance(policy, TunedStaticPolicy) and policy.cache_dir == tmp_path / "tuned_static"
    assert policy.settings == TuneSettings()
    policy.settings = FEW  # the default budget takes minutes
    r = evaluate_policy(scenario, policy, seeds=2, steps=3)
    assert r.policy == "tuned_static" and r.controlled == ["gamer"] and 0.0 <= r.sla_violation_rate <= 1.0
    assert len(list((tmp_path / "tuned_static").glob("tiny-*.json"))) == 1


def test_a_cache_directory_in_the_reference(tmp_path, scenario):
    policy = make_policy(f"tuned_static:{tmp_path}")
    assert isinstance(policy, TunedStaticPolicy) and policy.cache_dir == tmp_path
    policy.settings = FEW
    results = evaluate_policies(scenario, [make_policy("fifo"), policy], seeds=1, steps=2)
    assert list(results) == ["fifo", "tuned_static"]
    assert torch.isfinite(torch.tensor(results["tuned_static"].mean_reward))
