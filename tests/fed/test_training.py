"""Weights on the wire, FedProx's optimizer, tiny local training and DP-SGD accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fed_client.dpsgd import DPSGD
from shaping.agents.global_model import get_weights, make_model, set_weights
from shaping.agents.local_train import local_train, prox_adam
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
