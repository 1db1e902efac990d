"""PettingZoo parallel environment: every tenant of a scenario is an agent shaping its own traffic."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv

from shaping.config import RewardConfig, ScenarioConfig
from shaping.sim.tenant_view import MultiTenantSim, TenantView, episode_length, resolve_scenario
from shaping.sim.simulator import StepOutput


class ShapingParallelEnv(ParallelEnv[str, np.ndarray, np.ndarray]):
    """Every tenant is an agent named after the tenant, with its own observation and action spaces.

    All tenants share one simulated environment (B = 1); episodes start with one warm-up interval
    under each tenant's scenario policy and are truncated for every agent at once (no terminations).
    A live agent left out of the actions follows its scenario policy for that interval.

    Args:
        scenario: scenario name, path to a YAML file, or a config.
        reward: reward weights (defaults from RewardConfig), the same for every tenant.
        device: torch device of the simulator.
        max_episode_steps: truncation length (default: the scenario's episode_steps).
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (PettingZoo's class attribute)
        "name": "fedshape_shaping_v0",
        "render_modes": [],
        "is_parallelizable": True,
    }

    def __init__(
        self,
        scenario: str | ScenarioConfig = "default",
        reward: RewardConfig | None = None,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
    ) -> None:
        self.scenario = resolve_scenario(scenario)
        self.reward_config = reward or RewardConfig()
        self.max_episode_steps = episode_length(self.scenario, max_episode_steps)
        self.core = MultiTenantSim(self.scenario, 1, device, range(len(self.scenario.tenants)))
        self.possible_agents = [v.observation.spec.name for v in self.core.views]
        self.agents: list[str] = []
        self._views: dict[str, TenantView] = dict(zip(self.possible_agents, self.core.views, strict=True))
        # The same space objects every call, so seeding an agent's space sticks (PettingZoo's API test checks it).
        self._obs_spaces = {a: v.observation_space() for a, v in self._views.items()}
        self._act_spaces = {a: v.action_space() for a, v in self._views.items()}
        self.render_mode = None
        self._np_random: np.random.Generator | None = None
        self._elapsed = 0

    def observation_space(self, agent: str) -> spaces.Space[np.ndarray]:
        """Observation space of a tenant."""
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space[np.ndarray]:
        """Action space of a tenant."""
        return self._act_spaces[agent]

    def tenant_view(self, agent: str) -> TenantView:
        """The tenant's observation, action and reward view of the simulator."""
        return self._views[agent]

    @property
    def last_output(self) -> StepOutput | None:
        """The simulator's output of the last interval, for logging and tests."""
        return self.core.last

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start an episode with every tenant as a live agent. No options are used."""
        if seed is not None or self._np_random is None:
            self._np_random, _ = seeding.np_random(seed)
            sim_seed: int | None = int(self._np_random.integers(2**62))
        else:
            sim_seed = None  # continue the simulator's random stream
        out = self.core.reset(sim_seed)
        self._elapsed = 0
        self.agents = list(self.possible_agents)
        obs, _, infos = self._collect(out, {})
        return obs, infos

    def step(self, actions: dict[str, np.ndarray]) -> tuple[
        dict[str, np.ndarray], dict[str, float], dict[str, bool], dict[str, bool], dict[str, dict[str, Any]]
    ]:
        """Apply every agent's action for one control interval."""
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise ValueError(f"actions for agents that are not live: {sorted(unknown)}")
        index = {a: i for i, a in enumerate(self.possible_agents)}
        acts = {
            index[a]: torch.as_tensor(np.asarray(act, dtype=np.int64)).view(1, -1) for a, act in actions.items()
        }
        out = self.core.step(acts)
        self._elapsed += 1
        obs, rewards, infos = self._collect(out, actions)
        truncated = self._elapsed >= self.max_episode_steps
        terminations = dict.fromkeys(self.agents, False)
        truncations = dict.fromkeys(self.agents, truncated)
        if truncated:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def _collect(
        self, out: StepOutput, actions: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, dict[str, Any]]]:
        """Observations, rewards and infos of the live agents; info["plan"] is the plan each one ran."""
        obs, rewards, infos = {}, {}, {}
        for a in self.agents:
            view = self._views[a]
            metrics = view.metrics(out)
            terms = view.reward(out, self.reward_config, metrics[0])
            obs[a] = view.observe(out, metrics)[0].cpu().numpy().astype(np.float32)
            rewards[a] = float(terms.reward[0])
            spec = view.observation.spec
            plan = view.action.decode(actions[a]) if a in actions else self.core.default_plan.plan(0, view.index, spec)
            infos[a] = view.info(out, terms, m=metrics[0]) | {"plan": plan}
        return obs, rewards, infos
