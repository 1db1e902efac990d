"""Circular replay buffer of transitions held as tensors on the learner's device.

Batched environments produce B transitions per step, so ``add`` writes a batch at once (one indexed
copy per field, no Python loop over environments). Observations are stored raw: the agent normalizes
them when it learns, with its current statistics, so old transitions are not frozen under stale ones.

Only termination is stored as "done": a truncated transition bootstraps from its final observation
(NEXT_STEP autoreset returns it as the step's observation), and the autoreset step after it, whose
action had no effect, is left out through ``valid``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ReplayBatch(NamedTuple):
    """N transitions (N, ...), as stored or as sampled."""

    obs: torch.Tensor  # (N, obs_dim) float32, raw
    actions: torch.Tensor  # (N, D) long
    rewards: torch.Tensor  # (N,) float32
    next_obs: torch.Tensor  # (N, obs_dim) float32, raw; the final observation at a truncation
    terminations: torch.Tensor  # (N,) bool, no bootstrap (a truncation is not a termination)


class ReplayBuffer:
    """Fixed-capacity circular buffer; once full, each new transition overwrites the oldest.

    Args:
        capacity: transitions held (DQNConfig.buffer_size).
        obs_dim: length of the observation vector.
        action_dim: number of action dimensions D.
        device: where the storage lives (the environment's and learner's device).
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1 or obs_dim < 1 or action_dim < 1:
            raise ValueError(f"ReplayBuffer needs positive sizes, got {capacity=}, {obs_dim=}, {action_dim=}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.obs = torch.zeros((self.capacity, obs_dim), dtype=torch.float32, device=self.device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros((self.capacity, action_dim), dtype=torch.long, device=self.device)
        self.rewards = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.terminations = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)
        self.pos = 0
        """Index the next transition is written to."""
        self.size = 0
        """Transitions held (at most capacity)."""

    def __len__(self) -> int:
        return self.size

    @property
    def full(self) -> bool:
        """Every slot holds a transition; new ones overwrite the oldest."""
        return self.size == self.capacity

    @torch.no_grad()
    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminations: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> int:
        """Append a batch of B transitions, each field with leading dimension B.

        Args:
            valid: (B,) bool, which rows to keep (False at autoreset steps); None keeps all.
        Returns:
            The number of transitions written.
        """
        batch = ReplayBatch(obs, actions, rewards, next_obs, terminations)
        if valid is not None:
            keep = valid.to(self.device, torch.bool)
            batch = ReplayBatch(*(x.to(self.device)[keep] for x in batch))
        n = int(batch.rewards.shape[0])
        if n == 0:
            return 0
        if n > self.capacity:
            # Only the newest capacity rows would survive the wraparound anyway.
            batch = ReplayBatch(*(x[n - self.capacity :] for x in batch))
            n = self.capacity
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        self.obs[idx] = batch.obs.to(self.device, torch.float32)
        self.actions[idx] = batch.actions.to(self.device, torch.long)
        self.rewards[idx] = batch.rewards.to(self.device, torch.float32)
        self.next_obs[idx] = batch.next_obs.to(self.device, torch.float32)
        self.terminations[idx] = batch.terminations.to(self.device, torch.bool)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return n

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ReplayBatch:
        """batch_size transitions drawn uniformly with replacement (CleanRL's and SB3's sampling).

        Args:
            generator: random source on the buffer's device (None: torch's global one).
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (batch_size,), device=self.device, generator=generator)
        return ReplayBatch(
            self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminations[idx]
        )
