"""Behaviour cloning of a static baseline into the universal model."""

from __future__ import annotations

import pytest
import torch

from shaping.agents.global_model import make_model
from shaping.agents.imitation import clone_baseline
from shaping.agents.local_train import ConstantPolicy
from shaping.agents.universal import TenantTask, UniversalLayout, make_env
from shaping.config import PPOConfig

FAST = PPOConfig(num_steps=8, learning_rate=1e-2, update_epochs=4, num_minibatches=2)


def test_cloned_policy_takes_the_baselines_action_on_each_tenant():
    layout = UniversalLayout()
    model = make_model(layout, (32,), seed=0)
    envs = [make_env(TenantTask("small_congested", "shop", 4), layout),
            make_env(TenantTask("edge_gaming", "mobilegames", 4), layout)]  # fmt: skip
    targets = [ConstantPolicy(env, "static_priority").action for env in envs]
    assert not torch.equal(targets[0], targets[1])  # two tenants, two different plans to learn
    stats = clone_baseline(model, envs, "static_priority", 20, FAST, seed=1)
    assert stats.iterations == 20 and stats.accuracy > 0.95
    for env, target in zip(envs, targets, strict=True):
        model.set_envelope(env.mapping.envelope)
        env.reset_torch(seed=123)  # unseen seeds; a reset's all-idle observation is seen once per rollout
        agree = []
        for _ in range(3):
            obs = env.step_torch(target.expand(env.num_envs, -1)).obs
            agree.append((model.act(obs) == target).float().mean())
        assert float(torch.stack(agree).mean()) > 0.9  # of the action fields, on observations never trained on


def test_smoothing_keeps_the_greedy_action_but_leaves_room_to_explore():
    layout = UniversalLayout()
    env = make_env(TenantTask("small_congested", "shop", 4), layout)
    target = ConstantPolicy(env, "static_priority").action
    chosen_prob = {}
    for smoothing in (0.0, 0.3):
        model = make_model(layout, (32,), seed=0)
        stats = clone_baseline(model, [env], "static_priority", 20, FAST, seed=1, smoothing=smoothing)
        assert stats.accuracy > 0.95
        model.set_envelope(env.mapping.envelope)
        obs = env.step_torch(target.expand(env.num_envs, -1)).obs
        probs = torch.softmax(model.masked_logits(model.obs_norm(obs)), -1)  # (B, D, choices)
        free = model._allowed.sum(-1) > 1  # fields with a real choice
        chosen_prob[smoothing] = float(probs[:, torch.arange(len(target)), target][:, free].mean())
    assert chosen_prob[0.0] > 0.9
    assert 0.5 < chosen_prob[0.3] < chosen_prob[0.0] - 0.1
    with pytest.raises(ValueError, match="smoothing"):
        clone_baseline(model, [env], "static_priority", 1, FAST, smoothing=1.0)


def test_critic_learns_the_baselines_returns():
    layout = UniversalLayout()
    model = make_model(layout, (16,), seed=0)
    env = make_env(TenantTask("single_path", "devops", 2), layout)
    first = clone_baseline(model, [env], "static_priority", 1, FAST)
    later = clone_baseline(model, [env], "static_priority", 12, FAST)
    assert later.value_loss < first.value_loss


def test_refuses_no_iterations_or_no_environments():
    model = make_model(UniversalLayout(), (8,))
    env = make_env(TenantTask("single_path", "devops", 1), UniversalLayout())
    with pytest.raises(ValueError, match="iterations >= 1"):
        clone_baseline(model, [env], "static_priority", 0, FAST)
    with pytest.raises(ValueError, match="environments"):
        clone_baseline(model, [], "static_priority", 1, FAST)
    with pytest.raises(KeyError):
        clone_baseline(model, [env], "no_such_baseline", 1, FAST)
