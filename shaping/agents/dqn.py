"""DQN for the MultiDiscrete shaping action: a branching dueling Q-network, double-DQN targets, replay.

The action has D dimensions (per class: dscp, rate, ceil, priority, drop, path; then the root rate), so
one Q output per joint action would be the product of the dimensions' sizes. Following Tavakoli et al.
(2018), "Action Branching Architectures for Deep Reinforcement Learning" (BDQ), a shared torso feeds one
state value and one advantage head per dimension; dimension d's Q-values are
``Q_d(s, a_d) = V(s) + A_d(s, a_d) - mean_a' A_d(s, a')``. Each dimension is greedy on its own, so the
greedy joint action costs sum(nvec) outputs. It reads like CleanRL's ``dqn.py``; one iteration::

    agent = BranchingQNetwork(obs_dim, nvec, cfg.hidden_sizes, envelope=build_envelope(spec))
    target = make_target(agent)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, len(nvec), device)
    next_obs, global_step = env.reset_torch(seed=0), 0
    while global_step < cfg.total_timesteps:
        epsilon = linear_schedule(cfg.start_e, cfg.end_e, cfg.exploration_fraction * cfg.total_timesteps, global_step)
        _, next_obs = collect_transitions(env, agent, next_obs, steps, epsilon, buffer=buffer)
        global_step += steps * env.num_envs
        if global_step > cfg.learning_starts:
            dqn_update(agent, target, optimizer, buffer.sample(cfg.batch_size), cfg)
            if <cfg.target_network_frequency steps passed>:
                update_target(agent, target, cfg.tau)

Exploration stays inside the safety envelope: random actions come from ``random_actions`` and greedy
ones from Q-values with ``-inf`` at forbidden choices, and targets maximize over allowed choices only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import NamedTuple, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from shaping.agents.envelope import Envelope, mask_logits, random_actions
from shaping.agents.heads import MaskedMultiDiscrete
from shaping.agents.ppo import TorchVecEnv
from shaping.agents.replay import ReplayBatch, ReplayBuffer


class DQNHyperparams(Protocol):
    """The update's hyperparameters; shaping.config.DQNConfig has them (CleanRL names)."""

    @property
    def gamma(self) -> float: ...
    @property
    def double_q(self) -> bool: ...


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """ReLU torso, as in CleanRL's QNetwork."""
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class BranchingQNetwork(MaskedMultiDiscrete):
    """Branching dueling Q-network for a MultiDiscrete action, with the observation normalizer inside.

    Q-values are laid out padded, (..., D, max choices), like ActorCritic's logits. The dueling mean is
    over a dimension's real choices, not only the allowed ones, so the network's Q-values do not depend
    on the envelope (it is the tenant's, set after loading). Networks take normalized observations;
    ``act`` takes raw ones.

    Args:
        obs_dim: length of the observation vector.
        nvec: MultiDiscrete sizes of the action.
        hidden_sizes: widths of the shared torso's hidden layers.
        envelope: allowed choices (None: all); not saved in state_dict, set it per tenant.
        clip_obs: normalized observations are clipped to [-clip_obs, clip_obs].
    """

    kind = "dqn"

    def __init__(
        self,
        obs_dim: int,
        nvec: Iterable[int],
        hidden_sizes: Iterable[int] = (128, 128),
        envelope: Envelope | None = None,
        clip_obs: float = 10.0,
    ) -> None:
        super().__init__(obs_dim, nvec, hidden_sizes, envelope, clip_obs)
        self.torso = _mlp([self.obs_dim, *self.hidden_sizes])
        width = self.hidden_sizes[-1] if self.hidden_sizes else self.obs_dim
        self.value = nn.Linear(width, 1)
        self.advantage = nn.Linear(width, sum(self.nvec))

    def q_values(self, nobs: torch.Tensor) -> torch.Tensor:
        """(..., D, max choices) Q-values of normalized observations; padding holds 0 (mask before argmax)."""
        features = self.torso(nobs)
        adv = torch.where(self._real, self.advantage(features)[..., self._index], 0.0)
        adv_mean = adv.sum(-1, keepdim=True) / self._real.sum(-1, keepdim=True)
        q = self.value(features).unsqueeze(-1) + adv - adv_mean
        return torch.where(self._real, q, 0.0)

    def masked_q(self, nobs: torch.Tensor) -> torch.Tensor:
        """(..., D, max choices) Q-values of normalized observations, -inf outside the envelope and padding."""
        return mask_logits(self.q_values(nobs), self._allowed)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Masked Q-values of raw observations (the normalizer is applied, not updated)."""
        return self.masked_q(self.obs_norm(obs))

    def epsilon_greedy(self, nobs: torch.Tensor, epsilon: float) -> torch.Tensor:
        """(..., D) greedy actions of normalized observations, each dimension replaced with probability
        epsilon by a uniform draw from the envelope's choices.

        Each dimension explores on its own, not the joint action at once as in CleanRL: a branch learns
        E[r | its choice] under the other branches' behaviour, so a choice tried only while every other
        dimension is random looks worse than the greedy one and may never be corrected.
        """
        greedy = self.masked_q(nobs).argmax(-1)
        if epsilon <= 0.0:
            return greedy
        rows = greedy.reshape(-1, len(self.nvec))
        envelope = self.envelope or Envelope.allow_all(self.nvec)
        explore = torch.rand(rows.shape, device=rows.device) < epsilon
        random = random_actions(envelope, rows.shape[0], device=rows.device)
        return torch.where(explore, random, rows).reshape(greedy.shape)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True, epsilon: float = 0.05) -> torch.Tensor:
        """(..., D) actions of raw observations (..., obs_dim): greedy on the masked Q-values, or
        epsilon-greedy inside the envelope when not deterministic. Does not update the normalizer."""
        return self.epsilon_greedy(self.obs_norm(obs), 0.0 if deterministic else epsilon)


def make_target(agent: BranchingQNetwork) -> BranchingQNetwork:
    """A frozen copy of the agent (normalizer and envelope included) to compute targets with."""
    target = copy.deepcopy(agent)
    target.requires_grad_(False)
    return target.eval()


@torch.no_grad()
def update_target(agent: nn.Module, target: nn.Module, tau: float) -> None:
    """Polyak update ``target <- tau * agent + (1 - tau) * target`` (tau = 1: hard copy).

    Buffers (the normalizer's statistics) are copied, not averaged: the target's weights were fitted to
    inputs normalized the way the agent now normalizes them only if both share the statistics.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    for p_target, p in zip(target.parameters(), agent.parameters(), strict=True):
        p_target.lerp_(p, tau)
    for b_target, b in zip(target.buffers(), agent.buffers(), strict=True):
        b_target.copy_(b)


def linear_schedule(start_e: float, end_e: float, duration: float, t: float) -> float:
    """CleanRL's epsilon: start_e at t = 0, linear to end_e at t = duration, end_e after."""
    if duration <= 0:
        return end_e
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e) if end_e <= start_e else min(slope * t + start_e, end_e)


class Transitions(NamedTuple):
    """num_steps x num_envs transitions, as collected (T, B, ...); raw observations."""

    obs: torch.Tensor  # (T, B, obs_dim)
    actions: torch.Tensor  # (T, B, D) long
    rewards: torch.Tensor  # (T, B)
    next_obs: torch.Tensor  # (T, B, obs_dim), the final observation at a truncation
    terminations: torch.Tensor  # (T, B) bool
    truncations: torch.Tensor  # (T, B) bool
    valid: torch.Tensor  # (T, B) bool, the action took effect (False at autoreset steps)


@torch.no_grad()
def collect_transitions(
    env: TorchVecEnv,
    agent: BranchingQNetwork,
    next_obs: torch.Tensor,
    num_steps: int,
    epsilon: float,
    *,
    buffer: ReplayBuffer | None = None,
    update_obs_norm: bool = True,
) -> tuple[Transitions, torch.Tensor]:
    """Step every environment num_steps times epsilon-greedily, batched, adding to the replay buffer.

    Args:
        env: the batched environment (NEXT_STEP autoreset).
        agent: the Q-network; its normalizer is updated with every new observation if update_obs_norm.
        next_obs: (B, obs_dim) raw observations to act on first (from reset_torch or the last call).
        num_steps: steps per environment.
        epsilon: probability of a random action (from the envelope) per environment and step.
        buffer: where each step's B transitions go, autoreset steps left out (None: only returned).
    Returns:
        The transitions, and the raw observations to continue from.
    """
    b = next_obs.shape[0]
    dev = next_obs.device
    obs = torch.empty((num_steps + 1, b, agent.obs_dim), dtype=torch.float32, device=dev)
    actions = torch.empty((num_steps, b, len(agent.nvec)), dtype=torch.long, device=dev)
    rewards = torch.empty((num_steps, b), device=dev)
    terminations, truncations, resets = (torch.empty((num_steps, b), dtype=torch.bool, device=dev) for _ in range(3))
    obs[0] = next_obs.float()
    for step in range(num_steps):
        actions[step] = agent.epsilon_greedy(agent.obs_norm(obs[step]), epsilon)
        res = env.step_torch(actions[step])
        obs[step + 1] = res.obs.float()
        rewards[step] = res.reward
        terminations[step] = res.terminated
        truncations[step] = res.truncated
        resets[step] = res.reset
        if update_obs_norm:
            agent.obs_norm.update(obs[step + 1])
        if buffer is not None:
            buffer.add(obs[step], actions[step], rewards[step], obs[step + 1], terminations[step], valid=~resets[step])
    # obs[t + 1] is the observation step t produced: the final one where step t truncated.
    out = Transitions(obs[:-1], actions, rewards, obs[1:], terminations, truncations, ~resets)
    return out, obs[-1]


@torch.no_grad()
def td_targets(
    agent: BranchingQNetwork, target: BranchingQNetwork, batch: ReplayBatch, gamma: float, double_q: bool = True
) -> torch.Tensor:
    """(N,) one-step targets shared by every action dimension (BDQ's mean-over-branches target).

    ``y = r + gamma * (1 - terminated) * mean_d Q'_d(s', a*_d)`` with ``a*_d = argmax Q_d(s', .)`` of the
    online network (double DQN) or of the target network, each over the envelope's choices. Averaging
    the branches gives every dimension the same estimate of the next state's value (Tavakoli et al. found
    it more stable than per-branch targets); a truncated transition bootstraps from its final observation.
    """
    next_q_target = target.masked_q(target.obs_norm(batch.next_obs))
    if double_q:
        next_actions = agent.masked_q(agent.obs_norm(batch.next_obs)).argmax(-1, keepdim=True)
        next_q = next_q_target.gather(-1, next_actions).squeeze(-1)
    else:
        next_q = next_q_target.max(-1).values
    not_terminal = 1.0 - batch.terminations.to(next_q.dtype)
    return batch.rewards + gamma * not_terminal * next_q.mean(-1)


def dqn_update(
    agent: BranchingQNetwork,
    target: BranchingQNetwork,
    optimizer: torch.optim.Optimizer,
    batch: ReplayBatch,
    cfg: DQNHyperparams,
    *,
    max_grad_norm: float = 10.0,
) -> dict[str, float]:
    """One gradient step of the Huber TD loss on a replay minibatch, averaged over branches and batch.

    The target network is not updated here (call update_target every target_network_frequency steps).

    Args:
        max_grad_norm: gradient norm clip (SB3's DQN default; DQNConfig has no field for it yet).
    Returns:
        loss, mean Q of the taken actions, mean target and the gradient norm before clipping (floats).
    """
    y = td_targets(agent, target, batch, cfg.gamma, cfg.double_q)
    q = agent.q_values(agent.obs_norm(batch.obs)).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    loss = F.smooth_l1_loss(q, y.unsqueeze(-1).expand_as(q))

    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
    optimizer.step()
    return {
        "td_loss": float(loss.detach()),
        "q_values": float(q.detach().mean()),
        "td_target": float(y.mean()),
        "grad_norm": float(grad_norm),
        "learning_rate": float(optimizer.param_groups[0]["lr"]),
    }
