"""FedShape tenant side: spec, traffic models, simulator, baselines (and later agents, enforcement)."""

from __future__ import annotations

import gymnasium

#: Gymnasium id of the one-tenant shaping environment (shaping.sim.gym_env.ShapingEnv).
ENV_ID = "FedShape/Shaping-v0"


def register_envs() -> None:
    """Register the Gymnasium environment and its vector entry point; calling it again does nothing."""
    if ENV_ID in gymnasium.registry:
        return
    # No max_episode_steps here: the environment truncates itself at its own max_episode_steps,
    # and a TimeLimit wrapper on top would disagree with it when a scenario changes the length.
    gymnasium.register(
        id=ENV_ID,
        entry_point="shaping.sim.gym_env:ShapingEnv",
        vector_entry_point="shaping.sim.vector_env:ShapingVectorEnv",
    )


register_envs()
