"""PPO: learns a tiny environment with a known optimum, handles NEXT_STEP autoreset, runs on the simulator."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import pytest
import torch

from experiments.config import PPOConfig
from shaping.agents import (
    ActorCritic,
    Envelope,
    TorchVecEnv,
    build_envelope,
    collect_rollout,
    linear_lr,
    make_optimizer,
    ppo_update,
    set_lr,
)
from shaping.sim import ShapingVectorEnv
from shaping.sim.scenarios import load_scenario


class ToyStep(NamedTuple):
    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    reset: torch.Tensor


class ContextBandit:
    """A contextual bandit with ShapingVectorEnv's tensor API and NEXT_STEP autoreset.

    Each step shows a random context (one-hot); the reward is the fraction of action dimensions
    equal to the context's optimal choice, so the optimal return is 1 per step. Episodes are
    truncated after episode_steps; the step after is an autoreset step (action ignored, reward 0).
    """

    def __init__(
        self, num_envs: int, nvec: tuple[int, ...] = (4, 5, 3, 6), n_contexts: int = 3, episode_steps: int = 5
    ):
        self.num_envs = num_envs
        self.nvec = nvec
        self.n_contexts = n_contexts
        self.episode_steps = episode_steps
        # The last choice of each dimension is never optimal (tests forbid it with an envelope).
        self.optimal = torch.tensor([[(c + d) % (n - 1) for d, n in enumerate(nvec)] for c in range(n_contexts)])
        self.gen = torch.Generator().manual_seed(0)
        self.ctx = torch.zeros(num_envs, dtype=torch.long)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long)
        self.autoreset = torch.zeros(num_envs, dtype=torch.bool)

    def _new_obs(self) -> torch.Tensor:
        self.ctx = torch.randint(self.n_contexts, (self.num_envs,), generator=self.gen)
        return torch.nn.functional.one_hot(self.ctx, self.n_contexts).float()

    def reset_torch(self, *, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            self.gen.manual_seed(seed)
        self.elapsed.zero_()
        self.autoreset.zero_()
        return self._new_obs()

    def step_torch(self, actions: torch.Tensor) -> ToyStep:
        reset = self.autoreset.clone()
        reward = (actions == self.optimal[self.ctx]).float().mean(-1)
        self.elapsed = torch.where(reset, 0, self.elapsed + 1)
        truncated = (self.elapsed >= self.episode_steps) & ~reset
        self.autoreset = truncated
        return ToyStep(
            obs=self._new_obs(),
            reward=torch.where(reset, 0.0, reward),
            terminated=torch.zeros_like(reset),
            truncated=truncated,
            reset=reset,
        )


def _greedy_reward(env: ContextBandit, agent: ActorCritic) -> float:
    """Mean reward of the deterministic policy over every context."""
    obs = torch.eye(env.n_contexts)
    return float((agent.act(obs) == env.optimal).float().mean())


def test_ppo_learns_the_bandit_optimum_quickly():
    torch.manual_seed(0)
    env = ContextBandit(num_envs=16)
    _: TorchVecEnv = env  # the toy env satisfies the protocol collect_rollout expects
    # Forbid the never-optimal last choice of each dimension: learning must work inside the envelope.
    envelope = Envelope(tuple(tuple(i < n - 1 for i in range(n)) for n in env.nvec))
    cfg = PPOConfig(learning_rate=3e-3, num_steps=8, gamma=0.5, num_minibatches=2, update_epochs=4, ent_coef=0.0)
    agent = ActorCritic(env.n_contexts, env.nvec, hidden_sizes=(32, 32), envelope=envelope)
    optimizer = make_optimizer(agent, cfg.learning_rate)
    num_iterations = 60
    start = time.perf_counter()
    next_obs = env.reset_torch(seed=0)
    sampled = 0.0
    for iteration in range(1, num_iterations + 1):
        set_lr(optimizer, linear_lr(cfg.learning_rate, iteration, num_iterations))
        rollout, next_obs = collect_rollout(env, agent, next_obs, cfg.num_steps)
        assert bool(envelope.contains(rollout.actions).all())
        ppo_update(agent, optimizer, rollout, cfg)
        # Near-optimal return of the sampling policy itself (random play scores about 0.26).
        sampled = float(rollout.rewards[rollout.valid].mean())
        if sampled >= 0.95 and _greedy_reward(env, agent) == 1.0:
            break
    elapsed = time.perf_counter() - start
    print(f"iterations {iteration}, {elapsed:.2f}s, sampled return {sampled:.3f}")
    assert sampled >= 0.95
    assert _greedy_reward(env, agent) == 1.0
    assert elapsed < 10.0


def test_rollout_marks_autoreset_steps_and_bootstraps_the_final_observation():
    torch.manual_seed(0)
    env = ContextBandit(num_envs=3, episode_steps=2)
    agent = ActorCritic(env.n_contexts, env.nvec, hidden_sizes=(8,))
    rollout, next_obs = collect_rollout(env, agent, env.reset_torch(seed=1), num_steps=6)
    # Steps 0, 1 are the first episode (truncated at 1), 2 the autoreset, 3, 4 the next episode, 5 the autoreset.
    assert rollout.truncations.all(1).tolist() == [False, True, False, False, True, False]
    assert rollout.valid.all(1).tolist() == [True, True, False, True, True, False]
    assert (rollout.rewards[~rollout.valid] == 0).all()
    # The truncated step's bootstrap is the value of the observation the autoreset step acted on.
    torch.testing.assert_close(rollout.next_values[1], agent.get_value(rollout.obs[2]))
    torch.testing.assert_close(rollout.next_values[:-1], rollout.values[1:])
    torch.testing.assert_close(rollout.next_values[-1], agent.get_value(agent.obs_norm(next_obs)))
    cfg = PPOConfig(num_minibatches=2, update_epochs=1)
    stats = ppo_update(agent, make_optimizer(agent, 1e-3), rollout, cfg)
    assert stats["batch_size"] == 4 * env.num_envs  # the autoreset steps are left out


def test_uniform_heads_give_the_envelope_entropy_and_finite_gradients():
    nvec = (3, 4, 2)
    envelope = Envelope(((True, False, True), (True, True, True, False), (False, True)))
    agent = ActorCritic(5, nvec, hidden_sizes=(8,), envelope=envelope)
    last = agent.actor[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    action, logprob, entropy, _ = agent.get_action_and_value(torch.randn(64, 5))
    expected = torch.log(torch.tensor([2.0, 3.0, 1.0])).sum()
    torch.testing.assert_close(entropy, expected.expand(64))
    torch.testing.assert_close(logprob, -expected.expand(64))
    assert bool(envelope.contains(action).all())
    (entropy.mean() + logprob.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)


def test_linear_lr_anneals_from_the_rate_to_nearly_zero():
    assert linear_lr(1e-3, 1, 10) == pytest.approx(1e-3)
    assert linear_lr(1e-3, 10, 10) == pytest.approx(1e-4)
    opt = make_optimizer(ActorCritic(2, (2,), hidden_sizes=(4,)), 1e-3)
    set_lr(opt, 5e-4)
    assert all(g["lr"] == 5e-4 for g in opt.param_groups)


def test_collect_and_update_on_the_simulator_change_the_parameters():
    env = ShapingVectorEnv(num_envs=8, scenario=load_scenario("default"), tenant="gameco")
    spec = env.view.action.spec
    envelope = build_envelope(spec)
    agent = ActorCritic(env.single_observation_space.shape[0], env.single_action_space.nvec, envelope=envelope)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    cfg = PPOConfig(num_steps=4, num_minibatches=2, update_epochs=2)
    rollout, next_obs = collect_rollout(env, agent, env.reset_torch(seed=0), cfg.num_steps)
    assert rollout.obs.shape == (4, 8, agent.obs_dim)
    assert rollout.actions.shape == (4, 8, len(agent.nvec))
    assert bool(envelope.contains(rollout.actions).all())
    assert next_obs.shape == (8, agent.obs_dim)
    stats = ppo_update(agent, make_optimizer(agent, cfg.learning_rate), rollout, cfg)
    assert all(math.isfinite(v) for k, v in stats.items() if k != "explained_variance")
    after = agent.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("actor.") for k in changed) and any(k.startswith("critic.") for k in changed)
    assert float(agent.obs_norm.count) == pytest.approx(4 * 8, abs=1e-3)  # one update per new observation
