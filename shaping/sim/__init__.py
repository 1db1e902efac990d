"""Batched multi-tenant network simulator and its Gymnasium / PettingZoo interfaces."""

from __future__ import annotations

from typing import Any

from shaping import register_envs
from shaping.sim.gym_env import ShapingEnv
from shaping.sim.parallel_env import ShapingParallelEnv
from shaping.sim.vector_env import ShapingVectorEnv

# Gymnasium finds ENV_ID wherever the simulator is imported: the package `shaping` registers it only when
# gymnasium was imported first (it no longer imports gymnasium itself, for the CLI's start-up time).
register_envs()


def parallel_env(**kwargs: Any) -> ShapingParallelEnv:
    """The PettingZoo parallel environment (every tenant an agent); kwargs go to ShapingParallelEnv."""
    return ShapingParallelEnv(**kwargs)


__all__ = ["ShapingEnv", "ShapingParallelEnv", "ShapingVectorEnv", "parallel_env"]
