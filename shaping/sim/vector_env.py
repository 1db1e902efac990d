"""Gymnasium vector environment: B copies of the one-tenant task stepped together in one batched Simulator.

Autoreset mode is NEXT_STEP: the step after an environment is truncated resets it (its action is
ignored, its reward is 0) and returns the observation of its warm-up interval, while the other
environments step as usual, all in the same batched simulator step. SAME_STEP would need a second
simulator step for the reset environments, and the simulator steps every environment at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from shaping.config import RewardConfig, ScenarioConfig
from shaping.sim.tenant_view import MultiTenantSim, Policy, episode_length, resolve_scenario, tenant_index
from shaping.sim.simulator import StepOutput
from shaping.spec import RewardTerms


class TorchStep(NamedTuple):
    """One vector step as tensors on the simulator's device, each with leading dimension B."""

    obs: torch.Tensor  # (B, obs) float32
    reward: torch.Tensor  # (B,) float32
    terminated: torch.Tensor  # (B,) bool, always False (continuing task)
    truncated: torch.Tensor  # (B,) bool
    terms: RewardTerms  # (B,) each, the reward's terms
    reset: torch.Tensor  # (B,) bool, environments autoreset at this step (their obs starts an episode)


class ShapingVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """B environments of one controlled tenant in one batched Simulator (NEXT_STEP autoreset).

    Args:
        num_envs: number of environments B.
        scenario: scenario name, path to a YAML file, or a config.
        tenant: index or name of the controlled tenant.
        reward: reward weights (defaults from RewardConfig).
        other_policies: tenant name -> baseline name or batched callable (B, obs) -> (B, n) actions.
        device: torch device of the simulator ("cuda" keeps everything on the GPU).
        max_episode_steps: truncation length (default: the scenario's episode_steps).
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium's class attribute)
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": [],
    }
    single_observation_space: spaces.Box
    single_action_space: spaces.MultiDiscrete

    def __init__(
        self,
        num_envs: int = 8,
        scenario: str | ScenarioConfig = "default",
        tenant: int | str = 0,
        reward: RewardConfig | None = None,
        other_policies: Mapping[str, Policy] | None = None,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
    ) -> None:
        self.scenario = resolve_scenario(scenario)
        self.tenant = tenant_index(self.scenario, tenant)
        self.reward_config = reward or RewardConfig()
        self.max_episode_steps = episode_length(self.scenario, max_episode_steps)
        self.num_envs = num_envs
        self.core = MultiTenantSim(
            self.scenario, num_envs, device, [self.tenant], other_policies, batched_callables=True
        )
        self.device = self.core.sim.device
        self.view = self.core.views[self.tenant]
        self.single_observation_space = self.view.observation_space()
        self.single_action_space = self.view.action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = None
        # Step counters live on the host: truncation never waits on the device.
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)
        self._sim_seeded = False

    @property
    def last_output(self) -> StepOutput | None:
        """The simulator's output of the last interval (all tenants), for logging and tests."""
        return self.core.last

    @property
    def aqm(self) -> bool:
        """Whether the controlled tenant's leaf queues run CoDel: off unless set (an action cannot switch it;
        an evaluator running the fq_codel baseline for the tenant sets it)."""
        return bool(self.core.aqm[self.tenant])

    @aqm.setter
    def aqm(self, on: bool) -> None:
        self.core.set_aqm(self.tenant, on)

    @property
    def elapsed_steps(self) -> np.ndarray:
        """(B,) agent steps taken in each environment's current episode; writable, e.g. to stagger episode ends."""
        return self._elapsed

    # ------------------------------------------------------------------ torch API
    def reset_torch(self, *, seed: int | None = None) -> torch.Tensor:
        """Reset every environment; returns (B, obs) observations on the simulator's device.

        One generator drives the whole batch, so a seed makes the batch reproducible as a whole.
        """
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        sim_seed = None
        if seed is not None or not self._sim_seeded:
            sim_seed = int(self.np_random.integers(2**62))
            self._sim_seeded = True
        out = self.core.reset(sim_seed)
        self._elapsed[:] = 0
        self._autoreset[:] = False
        return self.view.observe(out)

    def step_torch(self, actions: torch.Tensor | np.ndarray) -> TorchStep:
        """Step every environment with (B, n) integer actions; results stay on the simulator's device."""
        act = torch.as_tensor(actions, device=self.device)
        reset_np = self._autoreset.copy()
        reset = torch.from_numpy(reset_np).to(self.device)
        out = self.core.step({self.tenant: act}, reset=reset if reset_np.any() else None)
        self._elapsed = np.where(reset_np, 0, self._elapsed + 1)
        truncated_np = (self._elapsed >= self.max_episode_steps) & ~reset_np
        # A copy: reset() clears the flags in place, and the returned truncations must not change with them.
        self._autoreset = truncated_np.copy()
        metrics = self.view.metrics(out)
        terms = self.view.reward(out, self.reward_config, metrics[0])
        return TorchStep(
            obs=self.view.observe(out, metrics),
            reward=torch.where(reset, torch.zeros_like(terms.reward), terms.reward).float(),
            terminated=torch.zeros(self.num_envs, dtype=torch.bool, device=self.device),
            truncated=torch.from_numpy(truncated_np).to(self.device),
            terms=terms,
            reset=reset,
        )

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every environment. `options["reset_mask"]` is refused: autoreset is NEXT_STEP."""
        if seed is not None and not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int or None (one generator drives the batch), got {seed!r}")
        if options and "reset_mask" in options:
            raise ValueError("partial resets happen through NEXT_STEP autoreset; reset_mask is not supported")
        obs = self.reset_torch(seed=None if seed is None else int(seed))
        assert self.core.last is not None
        info = self._info(self.core.last, self.view.reward(self.core.last, self.reward_config))
        return obs.cpu().numpy(), info

    def step(
        self, actions: np.ndarray | torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every environment (numpy in and out; actions may also be a tensor)."""
        res = self.step_torch(actions)
        assert self.core.last is not None
        return (
            res.obs.cpu().numpy(),
            res.reward.cpu().numpy(),
            res.terminated.cpu().numpy(),
            res.truncated.cpu().numpy(),
            self._info(self.core.last, res.terms),
        )

    def _info(self, out: StepOutput, terms: RewardTerms) -> dict[str, Any]:
        """Vector info: per key an array over environments and a `_key` mask (every environment has every key)."""
        m = self.view.metrics(out)[0]
        values = {
            "throughput": terms.throughput,
            "latency": terms.latency,
            "efficiency": terms.efficiency,
            "sla_violations": terms.violations.long(),
            "delivered_mbps": m.delivered_mbps,
            "p99_ms": m.delay_p99_ms,
            "loss": m.loss,
        }
        info: dict[str, Any] = {}
        every = np.ones(self.num_envs, dtype=np.bool_)
        for key, value in values.items():
            info[key] = value.cpu().numpy()
            info[f"_{key}"] = every
        return info
