"""ModelPolicy's numpy inference: the same decisions as its torch path, rebuilt when the model changes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from shaping.agents import ActorCritic, BranchingQNetwork, Envelope, build_envelope
from shaping.control import ModelPolicy, Observed
from shaping.spec import ActionLayout, ObservationLayout, TenantSpec
from tests.control.conftest import FakeBackend


def _model(spec: TenantSpec, cls: type[ActorCritic] | type[BranchingQNetwork] = ActorCritic, seed: int = 0):
    """A model whose outputs are spread out (an untrained actor's logits are nearly tied)."""
    gen = torch.Generator().manual_seed(seed)
    size = ObservationLayout(spec).size
    model = cls(size, ActionLayout(spec).nvec, (16, 16))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.obs_norm.update(torch.randn(64, size, generator=gen) * 2.0 + 1.0)
    return model


def _observations(spec: TenantSpec, n: int, seed: int = 1) -> list[Observed]:
    base = FakeBackend(spec).observe()
    gen = torch.Generator().manual_seed(seed)
    return [dataclasses.replace(base, obs=torch.randn(base.obs.shape, generator=gen) * 3) for _ in range(n)]


@torch.no_grad()
def _torch_logprob(model: ActorCritic, observed: Observed, action: np.ndarray) -> float:
    nobs = model.obs_norm(observed.obs.view(1, -1))
    return float(model.get_action_and_value(nobs, torch.as_tensor(action).view(1, -1))[1])


@pytest.mark.parametrize("cls", [ActorCritic, BranchingQNetwork])
def test_numpy_and_torch_paths_decide_alike(spec, cls):
    model = _model(spec, cls)
    fast, slow = ModelPolicy(model, spec), ModelPolicy(model, spec, fast=False)
    assert fast.numpy_actor is not None and slow.numpy_actor is None
    for observed in _observations(spec, 30):
        a, b = fast.decide(observed), slow.decide(observed)
        assert np.array_equal(a.action, b.action) and a.plan == b.plan and not a.explored
        assert a.action.dtype == np.int64 and a.plan == ActionLayout(spec).decode(a.action)
        if cls is ActorCritic:
            assert a.logprob == pytest.approx(b.logprob, rel=1e-5, abs=1e-5)
        else:
            assert math.isnan(a.logprob) and math.isnan(b.logprob)


def test_sampled_and_explored_actions_carry_the_behaviour_logprob(spec):
    model = _model(spec)
    eps = 0.3
    policy = ModelPolicy(model, spec, epsilon=eps, deterministic=False, generator=torch.Generator().manual_seed(5))
    log_u = -sum(math.log(sum(m)) for m in policy.envelope.masks)
    decisions = [(o, policy.decide(o)) for o in _observations(spec, 60, seed=6)]
    assert {d.explored for _, d in decisions} == {True, False}
    actions = torch.as_tensor(np.stack([d.action for _, d in decisions]))
    assert bool(build_envelope(spec).contains(actions).all())
    for observed, d in decisions:
        lp = _torch_logprob(model, observed, d.action)
        expected = math.log((1 - eps) * math.exp(lp) + eps * math.exp(log_u))
        assert d.logprob == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # sampling, not greedy: some non-explored actions differ from the greedy one
    greedy = ModelPolicy(model, spec)
    assert any(not np.array_equal(d.action, greedy.decide(o).action) for o, d in decisions if not d.explored)


@torch.no_grad()
def test_the_numpy_actor_is_rebuilt_when_the_model_changes_in_place(spec):
    model = _model(spec, seed=0)
    policy = ModelPolicy(model, spec)
    observations = _observations(spec, 20, seed=2)

    def agrees() -> bool:
        return all(np.array_equal(policy.decide(o).action, model.act(o.obs).numpy()) for o in observations)

    first = policy.numpy_actor
    assert agrees() and policy.numpy_actor is first  # unchanged model: the snapshot is kept
    model.load_state_dict(_model(spec, seed=1).state_dict())  # new weights and statistics, in place
    assert policy.numpy_actor is not first and agrees()
    second = policy.numpy_actor
    model.obs_norm.update(torch.randn(32, model.obs_dim) * 5)
    assert policy.numpy_actor is not second and agrees()
    narrow = Envelope(tuple((True,) + (False,) * (n - 1) for n in model.nvec))
    model.set_envelope(narrow)
    assert all(not policy.decide(o).action.any() for o in observations)  # only choice 0 is left
    # a hot swap builds a new policy, with its own snapshot of its own model
    other = _model(spec, seed=3)
    swapped = ModelPolicy(other, spec)
    assert swapped.numpy_actor is not policy.numpy_actor
    assert all(np.array_equal(swapped.decide(o).action, other.act(o.obs).numpy()) for o in observations)


def test_models_without_a_numpy_counterpart_run_on_torch(spec):
    class Custom(ActorCritic):
        """A subclass NumpyActor does not know (like SharedActorCritic)."""

    torch.manual_seed(0)
    model = Custom(ObservationLayout(spec).size, ActionLayout(spec).nvec, (8,))
    policy = ModelPolicy(model, spec, epsilon=0.5, generator=torch.Generator().manual_seed(1))
    assert policy.numpy_actor is None
    decisions = [policy.decide(o) for o in _observations(spec, 20, seed=4)]
    assert {d.explored for d in decisions} == {True, False}
    assert all(math.isfinite(d.logprob) for d in decisions)
    assert bool(build_envelope(spec).contains(torch.as_tensor(np.stack([d.action for d in decisions]))).all())


def test_decoded_plans_are_cached_within_bounds(spec):
    policy = ModelPolicy(_model(spec), spec, epsilon=1.0)
    policy.plan_cache_size = 8
    layout = ActionLayout(spec)
    observed = _observations(spec, 1)[0]
    for _ in range(40):
        d = policy.decide(observed)
        assert d.plan == layout.decode(d.action)
    assert len(policy._plans) == 8
