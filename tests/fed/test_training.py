"""Weights on the wire, FedProx's optimizer, tiny local training and DP-SGD accounting."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fed_client.dpsgd import DPSGD
from shaping.agents.global_model import get_weights, make_model, set_weights
from shaping.agents.local_train import evaluate_baseline, local_train, prox_adam
from shaping.agents.ppo import Rollout, minibatch_indices, ppo_update
from shaping.agents.universal import TenantTask, UniversalLayout, make_env
from shaping.config import PPOConfig

TINY = PPOConfig(num_steps=4, learning_rate=1e-3, update_epochs=1, num_minibatches=2)


def test_weights_roundtrip_keeps_the_local_count_and_sends_std():
    layout = UniversalLayout()
    a, b = make_model(layout, (8,), seed=0), make_model(layout, (8,), seed=1)
    a.obs_norm.update(torch.randn(50, layout.obs_dim) * 3)
    b.obs_norm.count.fill_(123.0)
    w = get_weights(a)
    assert len(w) == len(a.state_dict()) - 1  # obs_norm.count stays local
    np.testing.assert_allclose(w[1], a.obs_norm.var.sqrt().numpy(), rtol=1e-6)
    set_weights(b, w)
    torch.testing.assert_close(b.obs_norm.var, a.obs_norm.var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.actor[0].weight, a.actor[0].weight)
    assert float(b.obs_norm.count) == 123.0
    with pytest.raises(ValueError, match="weight arrays"):
        set_weights(b, w[:-1])


def test_prox_adam_pulls_towards_the_anchor():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = prox_adam([p], lr=0.1, mu=1.0)
    with torch.no_grad():
        p.fill_(2.0)  # moved away from the anchor 1.0
    p.grad = torch.zeros(1)  # no task gradient: only the proximal term acts
    opt.step()
    assert float(p.detach()) < 2.0


def test_local_train_runs_and_counts_steps():
    layout = UniversalLayout()
    model = make_model(layout, (8,))
    env = make_env(TenantTask("single_path", "devops", 2), layout)
    before = [t.clone() for t in model.parameters()]
    res = local_train(model, [env], 2, TINY, seed=0, proximal_mu=0.1)
    assert res.num_examples == 2 * 4 * 2
    assert res.optimizer_steps == 2 * TINY.update_epochs * TINY.num_minibatches
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_dpsgd_spends_epsilon_and_its_history_survives_rounds():
    layout = UniversalLayout()
    model = make_model(layout, (8,))
    env = make_env(TenantTask("single_path", "devops", 2), layout)
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    assert dp.epsilon() == 0.0
    local_train(model, [env], 1, TINY, dp=dp)
    first = dp.epsilon()
    assert 0 < first < float("inf")
    again = DPSGD(1.0, 1.0, 1e-5, history=dp.history_json())
    assert again.epsilon() == pytest.approx(first)
    local_train(model, [env], 1, TINY, dp=again)
    assert again.epsilon() > first
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())  # hooks removed


def _one_step_rollout(model, rewards):
    """A (T=1, B=n) rollout of terminal steps: each example's advantage is its own reward minus its value."""
    n = rewards.shape[0]
    g = torch.Generator().manual_seed(3)
    nobs = torch.randn(n, model.obs_dim, generator=g)
    with torch.no_grad():
        torch.manual_seed(4)
        actions, logprobs, _, values = model.get_action_and_value(nobs)
    one = lambda x: x.unsqueeze(0)  # noqa: E731
    yes, no = torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool)
    return Rollout(
        obs=one(nobs),
        actions=one(actions),
        logprobs=one(logprobs),
        rewards=one(rewards),
        values=one(values),
        next_values=one(torch.zeros(n)),
        terminations=yes,
        truncations=no,
        valid=yes,
    )


def _per_example_gradients(model, rollout, independent_examples):
    """Opacus's per-example gradients of one PPO step over the whole rollout, one row per example."""
    from opacus import GradSampleModule

    rows = []

    class Record(torch.optim.SGD):
        def step(self, closure=None):
            rows.append(torch.cat([p.grad_sample.reshape(p.grad_sample.shape[0], -1) for p in model.parameters()], 1))

    gsm = GradSampleModule(model, loss_reduction="mean")
    try:
        torch.manual_seed(0)  # the same minibatch order for both rollouts
        ppo_update(model, Record(model.parameters(), lr=0.0), rollout, PPOConfig(update_epochs=1, num_minibatches=1),
                   independent_examples=independent_examples)  # fmt: skip
    finally:
        gsm._close()
    return rows[0]


@pytest.mark.parametrize("independent_examples", [True, False])
def test_under_dp_sgd_an_example_changes_no_other_examples_gradient(independent_examples):
    # Clipping each example's gradient bounds its influence only if no other example's loss term reads its
    # data. Per-minibatch advantage normalization does: one outlier rescales every advantage.
    model = make_model(UniversalLayout(), (8,))
    rewards = torch.linspace(-1.0, 1.0, 12)
    outlier = rewards.clone()
    outlier[5] = 50.0
    a = _per_example_gradients(model, _one_step_rollout(model, rewards), independent_examples)
    b = _per_example_gradients(model, _one_step_rollout(model, outlier), independent_examples)
    changed = int((~torch.isclose(a, b, rtol=1e-5, atol=1e-7).all(dim=1)).sum())
    assert changed == (1 if independent_examples else 12)


def test_dp_sgd_training_keeps_the_normalizer_and_reward_scale_off_the_data():
    layout = UniversalLayout()
    env = make_env(TenantTask("single_path", "devops", 2), layout)
    private, plain = make_model(layout, (8,)), make_model(layout, (8,))
    stats = {k: v.clone() for k, v in private.obs_norm.state_dict().items()}
    local_train(private, [env], 2, TINY, dp=DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5))
    local_train(plain, [env], 2, TINY)
    for k, v in private.obs_norm.state_dict().items():
        assert torch.equal(v, stats[k]), k  # frozen: nothing of the tenant's data leaves un-noised
    assert not torch.equal(plain.obs_norm.mean, stats["mean"])
    with pytest.raises(ValueError, match="target_kl"):
        local_train(private, [env], 1, replace(TINY, target_kl=0.01), dp=DPSGD(1.0, 1.0, 1e-5))


def test_poisson_minibatches_sample_each_example_at_the_accounted_rate():
    sizes = [len(mb) for _ in range(200) for mb in minibatch_indices(64, 4, True, torch.device("cpu"))]
    assert len(set(sizes)) > 3  # sizes vary, as Poisson sampling's do
    assert np.mean(sizes) == pytest.approx(16, rel=0.1)
    parts = minibatch_indices(64, 4, False, torch.device("cpu"))
    assert sorted(torch.cat(parts).tolist()) == list(range(64))


def test_an_empty_poisson_sample_still_takes_its_noised_step_and_is_charged():
    # With 2 examples at sampling rate 1/8 most samples are empty; skipping them would reveal the count.
    model = make_model(UniversalLayout(), (8,))
    rollout = _one_step_rollout(model, torch.tensor([0.5, -0.5]))
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    cfg = PPOConfig(update_epochs=2, num_minibatches=8)
    optimizer = dp.attach(model, torch.optim.Adam(model.parameters(), lr=1e-3), batch=2, num_minibatches=8)
    before = [p.detach().clone() for p in model.parameters()]
    try:
        torch.manual_seed(0)
        ppo_update(model, optimizer, rollout, cfg, independent_examples=True)
    finally:
        dp.detach(model)
    assert sum(steps for _, _, steps in dp.accountant.history) == 16
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_baseline_evaluation_runs_fq_codel_with_codel_on_the_tenants_leaves(monkeypatch):
    """A constant action cannot express CoDel: evaluate_baseline switches it on the controlled tenant for
    fq_codel (and only then), and leaves the environment as it found it for the agent's evaluations."""
    env = make_env(TenantTask("default", "gameco", 1), UniversalLayout(), episode_steps=3)
    tenant, sim = env.env.tenant, env.env.core.sim
    seen: list[bool] = []
    step = sim.step

    def recording_step(plan, aqm=None):
        seen.append(aqm is not None and bool(aqm[tenant]))
        return step(plan, aqm)

    monkeypatch.setattr(sim, "step", recording_step)
    evaluate_baseline(env, "fq_codel", steps=2, seed=0)
    assert len(seen) == 3 and all(seen)  # the warm-up interval and both steps
    assert not env.env.aqm
    seen.clear()
    evaluate_baseline(env, "static_priority", steps=2, seed=0)
    assert len(seen) == 3 and not any(seen)
