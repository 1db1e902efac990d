"""Multi-agent learning: the joint env, independent and parameter-shared learners, masking, the loop and its policy."""

from __future__ import annotations

import math

import pytest
import torch

from shaping.agents import build_envelope, load_checkpoint, ppo_update
from shaping.agents.multi import MultiTenantVectorEnv, SharedActorCritic, collect_joint, make_groups
from shaping.agents.ppo import make_optimizer
from shaping.agents.train_multi import MultiAgentPolicy, train_multi
from shaping.config import PPOConfig, TrainConfig
from shaping.evaluation import evaluate_policies
from shaping.policies import baseline_policy
from shaping.sim import ShapingVectorEnv
from shaping.sim.scenarios import load_scenario

TINY_PPO = PPOConfig(total_timesteps=2 * 4 * 4, num_steps=4, num_minibatches=2, update_epochs=1, hidden_sizes=[16])
TINY_TRAIN = TrainConfig(num_envs=4, eval_every=1, eval_envs=2, eval_steps=3, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def env() -> MultiTenantVectorEnv:
    return MultiTenantVectorEnv(3, "default")


def test_joint_env_steps_every_tenant_like_the_single_tenant_env():
    """With one controlled tenant the joint env is ShapingVectorEnv: same observations and rewards."""
    joint = MultiTenantVectorEnv(2, "default", tenants=["bank"])
    single = ShapingVectorEnv(2, "default", tenant="bank")
    torch.manual_seed(0)
    o_joint, o_single = joint.reset_torch(seed=3), single.reset_torch(seed=3)
    joint.core.sim.reset(seed=11)
    single.core.sim.reset(seed=11)
    act = torch.zeros(2, len(single.view.action.nvec), dtype=torch.long)
    r_joint, r_single = joint.step_torch([act]), single.step_torch(act)
    assert len(o_joint) == 1 and o_joint[0].shape == o_single.shape
    torch.testing.assert_close(r_joint.obs[0], r_single.obs)
    torch.testing.assert_close(r_joint.rewards[:, 0], r_single.reward)


def test_joint_env_truncates_then_autoresets(env):
    short = MultiTenantVectorEnv(2, "default", max_episode_steps=2)
    short.reset_torch(seed=0)
    acts = [torch.zeros(2, len(v.action.nvec), dtype=torch.long) for v in short.views]
    flags = [(bool(s.truncated.all()), bool(s.reset.all())) for s in (short.step_torch(acts) for _ in range(3))]
    assert flags == [(False, False), (True, False), (False, True)]
    with pytest.raises(ValueError, match="actions for"):
        short.step_torch(acts[:1])


def test_shared_network_pads_indicates_and_masks_per_tenant(env):
    (group,) = make_groups(env, shared=True, hidden_sizes=[16])
    agent = group.agent
    assert isinstance(agent, SharedActorCritic) and group.n == 4
    obs = env.reset_torch(seed=0)
    x = group.encode(obs)
    assert x.shape == (4 * 3, agent.obs_dim)
    assert torch.equal(agent.tenant_of(x), torch.arange(4).repeat_interleave(3))
    torch.manual_seed(0)
    for _ in range(20):
        action, logprob, entropy, _ = agent.get_action_and_value(x)
        for pos, act in group.decode(action):
            view = env.views[pos]
            assert act.shape == (3, len(view.action.nvec))
            # every sampled action of a tenant stays inside its own envelope
            assert bool(build_envelope(view.observation.spec).contains(act).all())
        assert bool(torch.isfinite(logprob).all()) and bool(torch.isfinite(entropy).all())
    # a tenant with fewer classes has its padded dimensions pinned to choice 0
    small = min(range(4), key=lambda i: len(env.views[i].action.nvec))
    d = len(env.views[small].action.nvec)
    rows = action.view(4, 3, -1)[small]
    assert bool((rows[:, d - 1 : -1] == 0).all())


def test_independent_learners_have_their_tenants_envelopes(env):
    groups = make_groups(env, shared=False, hidden_sizes=[16])
    assert [g.members for g in groups] == [[0], [1], [2], [3]]
    for g in groups:
        assert g.agent.envelope == build_envelope(g.views[0].observation.spec)


@pytest.mark.parametrize("shared", [False, True])
def test_collect_joint_and_update_change_every_learner(env, shared):
    torch.manual_seed(0)
    groups = make_groups(env, shared=shared, hidden_sizes=[16])
    obs = env.reset_torch(seed=1)
    rollouts, obs = collect_joint(env, groups, obs, 5)
    for g, ro in zip(groups, rollouts, strict=True):
        assert ro.rewards.shape == (5, g.n * 3) and ro.actions.shape[:2] == (5, g.n * 3)
        before = [p.detach().clone() for p in g.agent.parameters()]
        stats = ppo_update(g.agent, make_optimizer(g.agent, 1e-3), ro, PPOConfig(num_minibatches=2, update_epochs=1))
        assert math.isfinite(stats["policy_loss"]) and math.isfinite(stats["value_loss"])
        assert any(not torch.equal(a, b) for a, b in zip(before, g.agent.parameters(), strict=True))


@pytest.mark.parametrize("shared", [False, True])
def test_train_multi_then_evaluate_against_baselines(tmp_path, shared):
    sc = load_scenario("small_congested")
    res = train_multi(sc, TINY_PPO, TINY_TRAIN, shared=shared, out_dir=tmp_path)
    assert res.iterations == 2 and res.tenants == [t.name for t in sc.tenants]
    assert res.best_eval is not None and set(res.best_eval.rewards) == set(res.tenants)
    assert (tmp_path / "train.csv").is_file()
    if shared:
        assert (tmp_path / "best" / "shared.pt").is_file()
    else:
        for spec_name, path in res.checkpoints.items():
            k = res.tenants.index(spec_name)
            assert load_checkpoint(path, res.groups[k].views[0].observation.spec).kind == "ppo"
    policy = MultiAgentPolicy(res.groups, sc, name="learners")
    results = evaluate_policies(sc, [baseline_policy("greedy_premium"), policy], seeds=2, steps=4)
    r = results["learners"]
    assert set(r.tenants) == set(res.tenants)
    assert 0.0 <= r.sla_violation_rate <= 1.0 and 0.0 < r.jain_throughput <= 1.0 + 1e-6
