"""Control policies: the model wrapper (exploration inside the envelope, behaviour log-probs), static, scripted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shaping.agents import ActorCritic, BranchingQNetwork, CheckpointMismatchError, build_envelope, save_checkpoint
from shaping.baselines import static_priority_plan
from shaping.control import Decision, ModelPolicy, ScriptedPolicy, StaticPolicy
from shaping.spec import ActionLayout, ObservationLayout, tenant_spec
from tests.control.conftest import FakeBackend, small_scenario


def _obs(spec):
    return FakeBackend(spec).observe()


def _actor(spec) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(ObservationLayout(spec).size, ActionLayout(spec).nvec, (16, 16))


def test_full_exploration_stays_inside_the_envelope(spec):
    policy = ModelPolicy(_actor(spec), spec, epsilon=1.0, generator=torch.Generator().manual_seed(0))
    env = build_envelope(spec)
    obs = _obs(spec)
    decisions = [policy.decide(obs) for _ in range(200)]
    assert all(d.explored for d in decisions)
    actions = torch.as_tensor(np.stack([d.action for d in decisions]))
    assert bool(env.contains(actions).all())
    # uniform over the envelope: every allowed choice of the drop dimension of the SLA-free class shows up
    site_drop = 2 * 6 + 4
    allowed = [i for i, ok in enumerate(env.masks[site_drop]) if ok]
    assert sorted(set(actions[:, site_drop].tolist())) == allowed
    for d in decisions[:5]:
        assert d.plan == ActionLayout(spec).decode(d.action)


@torch.no_grad()
def test_behaviour_logprob_mixes_policy_and_uniform(spec):
    model = _actor(spec)
    obs = _obs(spec)
    greedy = ModelPolicy(model, spec, epsilon=0.0)
    d = greedy.decide(obs)
    assert not d.explored
    nobs = model.obs_norm(obs.obs.view(1, -1))
    _, logp, _, _ = model.get_action_and_value(nobs, torch.as_tensor(d.action).view(1, -1))
    assert d.logprob == pytest.approx(float(logp), rel=1e-5)
    eps = ModelPolicy(model, spec, epsilon=0.25, generator=torch.Generator().manual_seed(3))
    env = build_envelope(spec)
    log_u = -sum(math.log(sum(m)) for m in env.masks)
    d2 = eps.decide(obs)
    _, lp, _, _ = model.get_action_and_value(nobs, torch.as_tensor(d2.action).view(1, -1))
    expected = math.log(0.75 * math.exp(float(lp)) + 0.25 * math.exp(log_u))
    assert d2.logprob == pytest.approx(expected, rel=1e-5)


def test_dqn_model_is_greedy_with_nan_logprob(spec):
    torch.manual_seed(0)
    q = BranchingQNetwork(ObservationLayout(spec).size, ActionLayout(spec).nvec, (16,))
    d = ModelPolicy(q, spec).decide(_obs(spec))
    assert math.isnan(d.logprob)
    assert bool(build_envelope(spec).contains(torch.as_tensor(d.action).view(1, -1)).all())


def test_from_checkpoint_checks_the_spec(spec, tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", _actor(spec), spec)
    policy = ModelPolicy.from_checkpoint(path, spec)
    assert policy.name.startswith("ppo:")
    assert isinstance(policy.decide(_obs(spec)), Decision)
    sc = small_scenario()
    sc.tenants[0].classes.pop()
    with pytest.raises(CheckpointMismatchError):
        ModelPolicy.from_checkpoint(path, tenant_spec(sc, 0))


def test_model_of_another_layout_is_refused(spec):
    model = ActorCritic(ObservationLayout(spec).size, [2, 2], (8,))
    with pytest.raises(ValueError, match="action sizes"):
        ModelPolicy(model, spec)
    with pytest.raises(ValueError, match="epsilon"):
        ModelPolicy(_actor(spec), spec, epsilon=1.5)


def test_static_and_scripted(spec):
    rules = static_priority_plan(spec)
    obs = _obs(spec)
    d = StaticPolicy(spec, rules).decide(obs)
    assert d.plan == rules and math.isnan(d.logprob)
    assert np.array_equal(d.action, ActionLayout(spec).encode(rules))
    zeros = np.zeros(len(ActionLayout(spec).nvec), dtype=np.int64)
    assert ScriptedPolicy(spec, lambda _o: zeros).decide(obs).plan == ActionLayout(spec).decode(zeros)
    assert ScriptedPolicy(spec, lambda _o: rules).decide(obs).plan == rules
