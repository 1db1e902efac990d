"""Gymnasium environment: one tenant shaped by an agent, the others by their policies, on the batched simulator.

Episodes start with one warm-up interval under each tenant's default plan, so the first observation
is a real measurement, as on a host where the agent takes over from static rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from shaping.config import RewardConfig, ScenarioConfig
from shaping.sim.simulator import StepOutput
from shaping.sim.tenant_view import MultiTenantSim, Policy, episode_length, resolve_scenario, tenant_index
from shaping.spec import ClassMetrics, HostMetrics


class ShapingEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One tenant shaped by the agent; the other tenants follow their policies on the same paths.

    A continuing task: `terminated` is always False and episodes are truncated after
    `max_episode_steps` agent steps (the warm-up interval of reset is not counted).

    Args:
        scenario: scenario name (conf/scenario/NAME.yaml), path to a YAML file, or a config.
        tenant: index or name of the controlled tenant.
        reward: reward weights (defaults from RewardConfig).
        other_policies: tenant name -> baseline name or callable(obs) -> action for some of the
            other tenants; the rest follow their scenario `policy`.
        device: torch device of the simulator.
        max_episode_steps: truncation length (default: the scenario's episode_steps).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)
    observation_space: spaces.Box
    action_space: spaces.MultiDiscrete

    def __init__(
        self,
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
        self.core = MultiTenantSim(self.scenario, 1, device, [self.tenant], other_policies)
        self.view = self.core.views[self.tenant]
        self.tenant_spec = self.view.observation.spec
        self.observation_space = self.view.observation_space()
        self.action_space = self.view.action_space()
        self.render_mode = None
        self._elapsed = 0
        self._sim_seeded = False

    @property
    def last_output(self) -> StepOutput | None:
        """The simulator's output of the last interval (all tenants), for logging and tests."""
        return self.core.last

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: reset the simulator and measure one warm-up interval. No options are used."""
        super().reset(seed=seed)
        sim_seed = None
        if seed is not None or not self._sim_seeded:
            # The simulator's generator is seeded from np_random, so an unseeded first reset is random too.
            sim_seed = int(self.np_random.integers(2**62))
            self._sim_seeded = True
        out = self.core.reset(sim_seed)
        self._elapsed = 0
        terms = self.view.reward(out, self.reward_config)
        info = self.view.info(out, terms) | {"plan": self.core.default_plan.plan(0, self.tenant, self.tenant_spec)}
        return self._observe(out), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the decoded plan for one control interval."""
        plan = self.view.action.decode(action)
        act = torch.as_tensor(np.asarray(action, dtype=np.int64)).view(1, -1)
        out = self.core.step({self.tenant: act})
        self._elapsed += 1
        metrics = self.view.metrics(out)
        terms = self.view.reward(out, self.reward_config, metrics[0])
        info = self.view.info(out, terms, m=metrics[0]) | {"plan": plan}
        truncated = self._elapsed >= self.max_episode_steps
        return self._observe(out, metrics), float(terms.reward[0]), False, truncated, info

    def _observe(self, out: StepOutput, metrics: tuple[ClassMetrics, HostMetrics] | None = None) -> np.ndarray:
        return self.view.observe(out, metrics)[0].cpu().numpy().astype(np.float32)
