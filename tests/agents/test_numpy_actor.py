"""NumpyActor against the torch models: same scores, actions and log-probabilities, masks respected."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from shaping.agents import ActorCritic, BranchingQNetwork, Envelope, build_envelope
from shaping.agents.numpy_actor import NumpyActor, UnsupportedModelError
from shaping.sim.scenarios import load_scenario
from shaping.spec import ActionLayout, ObservationLayout, TenantSpec, scenario_specs

SPECS = scenario_specs(load_scenario("default"))


def _random_envelope(nvec: tuple[int, ...], gen: torch.Generator) -> Envelope:
    """Each dimension keeps a random non-empty subset of its choices."""
    masks = []
    for n in nvec:
        keep = torch.rand(n, generator=gen) < 0.5
        keep[int(torch.randint(n, (), generator=gen))] = True
        masks.append(tuple(bool(k) for k in keep))
    return Envelope(tuple(masks))


def _trained_like(model: Any, obs_dim: int, seed: int) -> Any:
    """Spread-out weights (untrained actors' logits are ~0.01, nearly tied) and non-trivial statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    model.obs_norm.update(torch.randn(256, obs_dim, generator=gen) * 3.0 + 1.5)
    return model.eval()


def _observations(obs_dim: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # some far outside the statistics, so the normalizer's clipping is exercised
    return torch.randn(n, obs_dim, generator=gen) * torch.tensor([3.0, 60.0]).repeat_interleave(n // 2)[:, None]


def _model(kind: str, spec: TenantSpec, hidden: tuple[int, ...], envelope: Envelope | None, seed: int) -> Any:
    """An ActorCritic (kind "ppo") or BranchingQNetwork ("dqn") with trained-like weights and statistics."""
    obs_dim, nvec = ObservationLayout(spec).size, ActionLayout(spec).nvec.tolist()
    cls = ActorCritic if kind == "ppo" else BranchingQNetwork
    return _trained_like(cls(obs_dim, nvec, hidden, envelope=envelope), obs_dim, seed)


CASES = [
    (SPECS[0], (32, 32), "spec"),
    (SPECS[1], (16,), "random"),
    (SPECS[2], (), None),
    (SPECS[3], (24, 16, 8), "spec"),
]


def _envelope(spec: TenantSpec, which: str | None, seed: int) -> Envelope | None:
    if which == "spec":
        return build_envelope(spec)
    if which == "random":
        return _random_envelope(tuple(ActionLayout(spec).nvec.tolist()), torch.Generator().manual_seed(seed))
    return None


@pytest.mark.parametrize(("spec", "hidden", "which"), CASES, ids=[f"{s.name}-{h}-{w}" for s, h, w in CASES])
@torch.no_grad()
def test_actor_critic_scores_actions_and_logprobs_match_torch(spec, hidden, which):
    model = _model("ppo", spec, hidden, _envelope(spec, which, 1), seed=2)
    actor = NumpyActor.from_model(model)
    assert actor.kind == "ppo" and actor.has_log_prob
    obs = _observations(model.obs_dim, 200, seed=3)
    nobs = model.obs_norm(obs)
    np.testing.assert_allclose(actor.normalize(obs.numpy()), nobs.numpy(), rtol=1e-6, atol=1e-6)
    want = model.masked_logits(nobs).numpy()
    got = actor.scores(obs.numpy())
    assert got.dtype == np.float32
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    # float32 sums in another order: errors of a few ulps of the largest term, growing like the square root of
    # the number of terms in the first layer's sums (the observation's length)
    atol = 2e-7 * np.sqrt(model.obs_dim) * (1 + np.abs(want[finite]).max())
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=atol)
    greedy = actor.act(obs.numpy())
    assert np.array_equal(greedy, model.act(obs).numpy())
    # one observation at a time, as the control loop calls it (also from a torch tensor)
    for o in obs[:20]:
        assert np.array_equal(actor.act(o.numpy()), model.act(o).numpy())
        assert np.array_equal(actor.act(o), model.act(o).numpy())
    # log-probabilities of the greedy actions, of actions drawn inside the envelope, and of forbidden ones
    rng = np.random.default_rng(4)
    for actions in (
        greedy,
        actor.random_actions(len(obs), rng),
        rng.integers(0, model.nvec, (len(obs), len(model.nvec))),
    ):
        _, want_lp, _, _ = model.get_action_and_value(nobs, torch.as_tensor(actions))
        got_lp = actor.log_prob(obs.numpy(), actions)
        np.testing.assert_allclose(got_lp, want_lp.numpy(), rtol=1e-5, atol=1e-4)
    one, one_lp = actor.act_and_log_prob(obs[0].numpy())
    _, lp0, _, _ = model.get_action_and_value(nobs[:1], torch.as_tensor(one)[None])
    assert np.array_equal(one, greedy[0]) and one_lp == pytest.approx(float(lp0), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(("spec", "hidden", "which"), CASES, ids=[f"{s.name}-{h}-{w}" for s, h, w in CASES])
@torch.no_grad()
def test_q_network_values_and_greedy_actions_match_torch(spec, hidden, which):
    model = _model("dqn", spec, hidden, _envelope(spec, which, 5), seed=6)
    actor = NumpyActor.from_model(model)
    assert actor.kind == "dqn" and not actor.has_log_prob
    obs = _observations(model.obs_dim, 200, seed=7)
    want = model(obs).numpy()
    got = actor.scores(obs.numpy())
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    # float32 sums in another order: errors of a few ulps of the largest term, growing like the square root of
    # the number of terms in the first layer's sums (the observation's length)
    atol = 2e-7 * np.sqrt(model.obs_dim) * (1 + np.abs(want[finite]).max())
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=atol)
    assert np.array_equal(actor.act(obs.numpy()), model.act(obs).numpy())
    for o in obs[:20]:
        assert np.array_equal(actor.act(o.numpy()), model.act(o).numpy())
    with pytest.raises(UnsupportedModelError, match="greedy"):
        actor.log_prob(obs.numpy(), actor.act(obs.numpy()))
    with pytest.raises(UnsupportedModelError):
        actor.sample(obs.numpy(), np.random.default_rng(0))


@torch.no_grad()
def test_samples_follow_the_masked_policy_and_random_actions_the_envelope():
    spec = SPECS[2]
    envelope = _random_envelope(tuple(ActionLayout(spec).nvec.tolist()), torch.Generator().manual_seed(8))
    model = _model("ppo", spec, (16,), envelope, seed=9)
    actor = NumpyActor.from_model(model)
    obs = _observations(model.obs_dim, 2, seed=10)[0]
    rng = np.random.default_rng(11)
    n = 20000
    draws = actor.sample(np.broadcast_to(obs.numpy(), (n, model.obs_dim)), rng)
    probs = torch.softmax(model.masked_logits(model.obs_norm(obs)), -1).numpy()
    allowed = envelope.padded().numpy()
    for d, size in enumerate(model.nvec):
        freq = np.bincount(draws[:, d], minlength=probs.shape[-1]) / n
        assert freq[~allowed[d]].sum() == 0, f"dimension {d} drew a forbidden choice"
        np.testing.assert_allclose(freq[:size], probs[d, :size], atol=0.015)
    uniform = actor.random_actions(n, rng)
    assert bool(envelope.contains(torch.as_tensor(uniform)).all())
    for d in range(len(model.nvec)):
        freq = np.bincount(uniform[:, d], minlength=allowed.shape[1]) / n
        np.testing.assert_allclose(freq[allowed[d]], 1 / allowed[d].sum(), atol=0.02)


@torch.no_grad()
def test_a_snapshot_follows_the_weights_it_was_built_from():
    spec = SPECS[1]
    model = _model("ppo", spec, (16, 16), build_envelope(spec), seed=12)
    obs = _observations(model.obs_dim, 100, seed=13)
    before = NumpyActor.from_model(model)
    assert np.array_equal(before.act(obs.numpy()), model.act(obs).numpy())
    other = _model("ppo", spec, (16, 16), None, seed=14)
    model.load_state_dict(other.state_dict())  # a federated round's new weights, in place
    after = NumpyActor.from_model(model)
    assert np.array_equal(after.act(obs.numpy()), model.act(obs).numpy())
    assert not np.array_equal(before.act(obs.numpy()), after.act(obs.numpy())), "the snapshot must not follow"


def test_unsupported_models_are_refused():
    spec = SPECS[2]

    class Wider(ActorCritic):
        """A subclass may compute its logits otherwise: refused, not silently mis-served."""

    with pytest.raises(UnsupportedModelError, match="Wider"):
        NumpyActor.from_model(Wider(ObservationLayout(spec).size, ActionLayout(spec).nvec, (8,)))
    relu = ActorCritic(ObservationLayout(spec).size, ActionLayout(spec).nvec, (8,))
    relu.actor[1] = nn.ReLU()
    with pytest.raises(UnsupportedModelError, match="Tanh"):
        NumpyActor.from_model(relu)
    with pytest.raises(UnsupportedModelError):
        NumpyActor.from_model(nn.Linear(3, 4))
    actor = NumpyActor.from_model(ActorCritic(ObservationLayout(spec).size, ActionLayout(spec).nvec, (8,)))
    with pytest.raises(ValueError, match="length"):
        actor.act(np.zeros(ObservationLayout(spec).size + 1))
