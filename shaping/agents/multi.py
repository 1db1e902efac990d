"""Several tenants learning at once on the shared bottleneck: a joint vector env, learner groups, a shared network.

Every controlled tenant acts at every control step of one batched MultiTenantSim, so their actions meet
at the provider's queues. A learner group is one ActorCritic and the tenants it acts for:

- independent learners: one group per tenant, each with its own network and optimizer;
- parameter sharing: one group of every tenant; its SharedActorCritic sees each tenant's observation
  zero-padded to the longest one plus a one-hot tenant indicator (PettingZoo/SuperSuit's
  pad_observations and agent_indicator), and acts in the padded action of the tenant with the most
  classes; a tenant's missing classes are masked to one choice, so they add nothing to log-probabilities
  or entropy, and each tenant's own safety envelope masks its real dimensions.

``collect_joint`` is collect_rollout (shaping.agents.ppo) for all groups at once: each gets a Rollout of
its tenants' transitions (tenant-major batch: rows i*B..(i+1)*B are its i-th tenant), which
``ppo_update`` takes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from gymnasium.utils import seeding

from shaping.agents.envelope import Envelope, build_envelope, mask_logits
from shaping.agents.ppo import ActorCritic, Rollout, _gumbel_argmax
from shaping.config import RewardConfig, ScenarioConfig
from shaping.sim.tenant_view import MultiTenantSim, TenantView, episode_length, resolve_scenario, tenant_index
from shaping.spec import RewardTerms


class MultiStep(NamedTuple):
    """One joint step, tensors on the simulator's device."""

    obs: list[torch.Tensor]  # per controlled tenant, (B, obs_k)
    rewards: torch.Tensor  # (B, K) reward of each controlled tenant (0 at autoreset steps)
    terms: list[RewardTerms]  # per controlled tenant, (B,) each
    terminated: torch.Tensor  # (B,) bool, always False (continuing task)
    truncated: torch.Tensor  # (B,) bool
    reset: torch.Tensor  # (B,) bool, autoreset at this step (actions had no effect)


class MultiTenantVectorEnv:
    """B environments of a scenario in which several tenants are agent-controlled (NEXT_STEP autoreset).

    The torch API of ShapingVectorEnv with one observation, action and reward per controlled tenant.

    Args:
        num_envs: number of environments B.
        scenario: scenario name, path or config.
        tenants: indices or names of the controlled tenants; None: every tenant. The others follow
            their scenario policy.
        reward: reward weights, the same for every tenant.
        device: torch device of the simulator.
        max_episode_steps: truncation length (default: the scenario's episode_steps).
    """

    def __init__(
        self,
        num_envs: int,
        scenario: str | ScenarioConfig = "default",
        tenants: Sequence[int | str] | None = None,
        reward: RewardConfig | None = None,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
    ) -> None:
        self.scenario = resolve_scenario(scenario)
        picked = range(len(self.scenario.tenants)) if tenants is None else tenants
        self.tenants = [tenant_index(self.scenario, t) for t in picked]
        if len(set(self.tenants)) != len(self.tenants) or not self.tenants:
            raise ValueError(f"controlled tenants must be distinct and at least one, got {list(picked)}")
        self.num_envs = num_envs
        self.reward_config = reward or RewardConfig()
        self.max_episode_steps = episode_length(self.scenario, max_episode_steps)
        self.core = MultiTenantSim(self.scenario, num_envs, device, self.tenants, batched_callables=True)
        self.device = self.core.sim.device
        self.views: list[TenantView] = [self.core.views[k] for k in self.tenants]
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)
        self._rng, _ = seeding.np_random(None)

    @property
    def names(self) -> list[str]:
        """Names of the controlled tenants, in order."""
        return [v.observation.spec.name for v in self.views]

    @property
    def elapsed_steps(self) -> np.ndarray:
        """(B,) agent steps of each environment's current episode; writable, e.g. to stagger episode ends."""
        return self._elapsed

    def reset_torch(self, *, seed: int | None = None) -> list[torch.Tensor]:
        """Reset every environment; per controlled tenant its (B, obs_k) observations."""
        if seed is not None:
            self._rng, _ = seeding.np_random(seed)
        out = self.core.reset(int(self._rng.integers(2**62)))
        self._elapsed[:] = 0
        self._autoreset[:] = False
        return [v.observe(out) for v in self.views]

    def step_torch(self, actions: Sequence[torch.Tensor]) -> MultiStep:
        """Step every environment with each controlled tenant's (B, n_k) integer actions."""
        if len(actions) != len(self.tenants):
            raise ValueError(f"{len(actions)} actions for {len(self.tenants)} controlled tenants")
        reset_np = self._autoreset.copy()
        reset = torch.from_numpy(reset_np).to(self.device)
        acts = {k: a.to(self.device) for k, a in zip(self.tenants, actions, strict=True)}
        out = self.core.step(acts, reset=reset if reset_np.any() else None)
        self._elapsed = np.where(reset_np, 0, self._elapsed + 1)
        truncated_np = (self._elapsed >= self.max_episode_steps) & ~reset_np
        self._autoreset = truncated_np
        terms = [v.reward(out, self.reward_config) for v in self.views]
        rewards = torch.stack([t.reward for t in terms], -1).float()
        return MultiStep(
            obs=[v.observe(out) for v in self.views],
            rewards=torch.where(reset.unsqueeze(-1), torch.zeros_like(rewards), rewards),
            terms=terms,
            terminated=torch.zeros(self.num_envs, dtype=torch.bool, device=self.device),
            truncated=torch.from_numpy(truncated_np).to(self.device),
            reset=reset,
        )


class SharedActorCritic(ActorCritic):
    """An ActorCritic shared by several tenants: padded observation + one-hot tenant, per-tenant masks.

    The tenant of a row is read from its indicator, the last n_tenants inputs (after normalization the
    indicator's own column is the row's only positive one), and selects that tenant's action mask.

    Args:
        obs_dim: padded observation length plus n_tenants.
        nvec: the padded action's sizes.
        tenant_masks: per tenant its Envelope over the padded action.
        hidden_sizes, clip_obs: as for ActorCritic.
    """

    kind = "ppo_shared"
    _tenant_allowed: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        nvec: Iterable[int],
        tenant_masks: Sequence[Envelope],
        hidden_sizes: Iterable[int] = (128, 128),
        clip_obs: float = 10.0,
    ) -> None:
        super().__init__(obs_dim, nvec, hidden_sizes, None, clip_obs)
        self.n_tenants = len(tenant_masks)
        allowed = torch.stack([m.padded() for m in tenant_masks])
        self.register_buffer("_tenant_allowed", allowed, persistent=False)

    def tenant_of(self, nobs: torch.Tensor) -> torch.Tensor:
        """(...,) tenant index of each row, from its indicator."""
        return nobs[..., -self.n_tenants :].argmax(-1)

    def _row_allowed(self, nobs: torch.Tensor) -> torch.Tensor:
        return self._tenant_allowed[self.tenant_of(nobs)]

    def masked_logits(self, nobs: torch.Tensor) -> torch.Tensor:
        """(..., D, max choices) logits, -inf outside the row's tenant's envelope and its padding."""
        return mask_logits(self.actor(nobs)[..., self._index], self._row_allowed(nobs))

    def get_action_and_value(
        self, nobs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ActorCritic.get_action_and_value, with each row's tenant's mask."""
        allowed = self._row_allowed(nobs)
        logits = mask_logits(self.actor(nobs)[..., self._index], allowed)
        logp_all = torch.log_softmax(logits, -1)
        if action is None:
            action = _gumbel_argmax(logits)
        logprob = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1)
        safe = torch.where(allowed, logp_all, torch.zeros_like(logp_all))
        entropy = -(safe.exp() * safe).sum((-2, -1))
        return action, logprob, entropy, self.get_value(nobs)


class LearnerGroup:
    """One learner and the controlled tenants it acts for (positions into MultiTenantVectorEnv.views).

    Args:
        agent: the group's network (a SharedActorCritic when it has several tenants).
        members: positions of its tenants among the env's controlled tenants.
        views: the env's views of every controlled tenant.
    """

    def __init__(self, agent: ActorCritic, members: Sequence[int], views: Sequence[TenantView]) -> None:
        self.agent = agent
        self.members = list(members)
        self.views = [views[i] for i in self.members]
        self.n = len(self.members)
        self.obs_pad = max(v.observation.size for v in self.views)
        self.act_dims = [len(v.action.nvec) for v in self.views]

    @property
    def shared(self) -> bool:
        """Several tenants share this learner (observations are padded and carry the indicator)."""
        return self.n > 1

    def encode(self, obs: Sequence[torch.Tensor]) -> torch.Tensor:
        """(n*B, obs_dim) learner inputs from every controlled tenant's (B, obs_k) observations."""
        if not self.shared:
            return obs[self.members[0]].float()
        rows = []
        for i, pos in enumerate(self.members):
            x = obs[pos].float()
            pad = x.new_zeros(x.shape[0], self.obs_pad - x.shape[1])
            one_hot = x.new_zeros(x.shape[0], self.n)
            one_hot[:, i] = 1.0
            rows.append(torch.cat([x, pad, one_hot], -1))
        return torch.cat(rows, 0)

    def decode(self, actions: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(position, (B, n_k) actions) of each member from the learner's (n*B, D) actions."""
        if not self.shared:
            return [(self.members[0], actions)]
        out = []
        for i, (chunk, d) in enumerate(zip(actions.chunk(self.n, 0), self.act_dims, strict=True)):
            # The member's classes are the first d - 1 dimensions, its root the padded action's last.
            out.append((self.members[i], torch.cat([chunk[:, : d - 1], chunk[:, -1:]], -1)))
        return out

    def gather(self, per_tenant: torch.Tensor) -> torch.Tensor:
        """(n*B,) tenant-major rows of a (B, K) per-tenant quantity."""
        return per_tenant[:, self.members].t().reshape(-1)

    def repeat(self, per_env: torch.Tensor) -> torch.Tensor:
        """(n*B,) a (B,) per-environment quantity for each member."""
        return per_env.repeat(self.n)

    @torch.no_grad()
    def act(self, obs: Sequence[torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
        """Greedy actions of every member from raw observations."""
        return self.decode(self.agent.act(self.encode(obs)))


def make_groups(
    env: MultiTenantVectorEnv, shared: bool, hidden_sizes: Sequence[int], device: torch.device | str = "cpu"
) -> list[LearnerGroup]:
    """Independent learners (one ActorCritic per tenant, its envelope) or one SharedActorCritic for all."""
    views = env.views
    if not shared:
        groups = []
        for i, v in enumerate(views):
            spec = v.observation.spec
            agent = ActorCritic(v.observation.size, v.action.nvec, hidden_sizes, envelope=build_envelope(spec))
            groups.append(LearnerGroup(agent.to(device), [i], views))
        return groups
    # One class's dimensions and the root's: the same for every tenant of one scenario (shared levels).
    levels = {(*v.action.nvec[: (len(v.action.nvec) - 1) // v.n_classes], v.action.nvec[-1]) for v in views}
    if len(levels) != 1:
        raise ValueError("parameter sharing needs the same action levels for every tenant (one scenario's)")
    width = max(len(v.action.nvec) for v in views)
    big = max(views, key=lambda v: len(v.action.nvec))
    nvec = list(big.action.nvec)
    masks = []
    for v in views:
        own = build_envelope(v.observation.spec).masks
        # Missing classes: only their first choice is allowed (a constant, so they carry no gradient).
        pad = [tuple(j == 0 for j in range(n)) for n in nvec[len(own) - 1 : width - 1]]
        masks.append(Envelope((*own[:-1], *pad, own[-1])))
    obs_dim = max(v.observation.size for v in views) + len(views)
    agent = SharedActorCritic(obs_dim, nvec, masks, hidden_sizes)
    return [LearnerGroup(agent.to(device), list(range(len(views))), views)]


@torch.no_grad()
def collect_joint(
    env: MultiTenantVectorEnv, groups: Sequence[LearnerGroup], next_obs: list[torch.Tensor], num_steps: int
) -> tuple[list[Rollout], list[torch.Tensor]]:
    """Step every environment num_steps times with every group's sampled actions; a Rollout per group.

    Each group's normalizer is updated with every new observation, as collect_rollout does.
    Returns:
        The groups' rollouts, and the raw observations (per controlled tenant) to continue from.
    """
    b, dev = env.num_envs, env.device
    bufs = []
    for g in groups:
        n, a = g.n * b, g.agent
        bufs.append({
            "obs": torch.empty((num_steps, n, a.obs_dim), device=dev),
            "actions": torch.empty((num_steps, n, len(a.nvec)), dtype=torch.long, device=dev),
            "logprobs": torch.empty((num_steps, n), device=dev), "rewards": torch.empty((num_steps, n), device=dev),
            "values": torch.empty((num_steps + 1, n), device=dev),
        })  # fmt: skip
    flags = {f: torch.empty((num_steps, b), dtype=torch.bool, device=dev) for f in ("term", "trunc", "reset")}
    nobs = [g.agent.obs_norm(g.encode(next_obs)) for g in groups]
    for step in range(num_steps):
        acts: list[torch.Tensor | None] = [None] * len(env.views)
        for gi, g in enumerate(groups):
            buf = bufs[gi]
            buf["obs"][step] = nobs[gi]
            action, buf["logprobs"][step], _, buf["values"][step] = g.agent.get_action_and_value(nobs[gi])
            buf["actions"][step] = action
            for pos, act in g.decode(action):
                acts[pos] = act
        res = env.step_torch([a for a in acts if a is not None])
        flags["term"][step], flags["trunc"][step], flags["reset"][step] = res.terminated, res.truncated, res.reset
        next_obs = [o.float() for o in res.obs]
        for gi, g in enumerate(groups):
            bufs[gi]["rewards"][step] = g.gather(res.rewards)
            raw = g.encode(next_obs)
            g.agent.obs_norm.update(raw)
            nobs[gi] = g.agent.obs_norm(raw)
    rollouts = []
    for gi, g in enumerate(groups):
        buf = bufs[gi]
        buf["values"][num_steps] = g.agent.get_value(nobs[gi])
        term, trunc, reset = (flags[f].repeat(1, g.n) for f in ("term", "trunc", "reset"))
        rollouts.append(Rollout(buf["obs"], buf["actions"], buf["logprobs"], buf["rewards"], buf["values"][:-1],
                                buf["values"][1:], term, trunc, ~reset))  # fmt: skip
    return rollouts, next_obs
