"""Stable-Baselines3 VecEnv over the batched simulator: B environments of one tenant in one Simulator batch.

SB3 resets an environment in the step that ends its episode: the step returns the first observation of
the new episode and keeps the last one in ``infos[i]["terminal_observation"]``. The simulator steps every
environment at once, so the B environments here share their episodes: they start together and are
truncated together after ``max_episode_steps``, and that step's reset (one warm-up interval of the whole
batch, as in ShapingEnv.reset) runs before it returns. Truncation is reported as SB3 expects
(``dones[i]`` True and ``infos[i]["TimeLimit.truncated"]`` True), so PPO bootstraps from the terminal
observation; the task never terminates.

Needs the optional dependency ``stable-baselines3`` (``pip install -e '.[sb3]'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gymnasium
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from shaping.config import RewardConfig, ScenarioConfig
from shaping.sim.tenant_view import Policy
from shaping.sim.vector_env import ShapingVectorEnv


class ShapingSB3VecEnv(VecEnv):
    """SB3's VecEnv interface to a ShapingVectorEnv (the same simulator core, observations and rewards).

    Args:
        num_envs: number of environments B (one simulator batch).
        scenario: scenario name, path to a YAML file, or a config.
        tenant: index or name of the controlled tenant.
        reward: reward weights (defaults from RewardConfig).
        other_policies: tenant name -> baseline name or batched callable (B, obs) -> (B, n) actions.
        device: torch device of the simulator.
        max_episode_steps: truncation length (default: the scenario's episode_steps).
    """

    def __init__(
        self,
        num_envs: int = 64,
        scenario: str | ScenarioConfig = "default",
        tenant: int | str = 0,
        reward: RewardConfig | None = None,
        other_policies: Mapping[str, Policy] | None = None,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
    ) -> None:
        self.vector_env = ShapingVectorEnv(
            num_envs=num_envs,
            scenario=scenario,
            tenant=tenant,
            reward=reward,
            other_policies=other_policies,
            device=device,
            max_episode_steps=max_episode_steps,
        )
        self.render_mode = None
        super().__init__(num_envs, self.vector_env.single_observation_space, self.vector_env.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Reset every environment (one episode start for the batch); a seed from seed() applies to the batch.

        SB3's seed(s) gives environment i the seed s + i; one generator drives the batch, so the batch takes s.
        """
        seed = self._seeds[0]
        obs = self.vector_env.reset_torch(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        """Keep the actions for step_wait (the simulator steps synchronously)."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step the batch; at the end of the shared episode, reset it within the same call."""
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        res = self.vector_env.step_torch(np.asarray(self._actions, dtype=np.int64))
        self._actions = None
        obs = res.obs.cpu().numpy()
        rewards = res.reward.cpu().numpy()
        truncated = res.truncated.cpu().numpy()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if truncated.any():
            if not truncated.all():
                # Only possible if elapsed_steps was edited: SB3 needs same-step resets, which the batch
                # can only do for all environments at once.
                raise RuntimeError("environments of the batch truncated at different steps; they share episodes")
            for i, info in enumerate(infos):
                info["terminal_observation"] = obs[i]
                info["TimeLimit.truncated"] = True
            obs = self.vector_env.reset_torch().cpu().numpy()
            self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs, rewards, truncated, infos

    def close(self) -> None:
        """Nothing to release: the simulator lives in this process."""
        self.vector_env.close()

    # The B environments are one object: attributes and methods are those of the vector env, one per index.
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The vector env's attribute, once per requested index."""
        value = getattr(self.vector_env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the vector env; only for all environments at once."""
        self._require_all(indices, "set_attr")
        setattr(self.vector_env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the vector env once; its result is repeated per requested index."""
        self._require_all(indices, "env_method")
        result = getattr(self.vector_env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gymnasium.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """No environment is wrapped in a Gymnasium wrapper."""
        return [False for _ in self._get_indices(indices)]

    def _require_all(self, indices: VecEnvIndices, what: str) -> None:
        chosen: Iterable[int] = self._get_indices(indices)
        if sorted(chosen) != list(range(self.num_envs)):
            raise ValueError(f"{what}: the environments share one simulator; use indices=None")
