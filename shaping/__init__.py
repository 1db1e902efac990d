"""FedShape tenant side: spec, traffic models, simulator, baselines (and later agents, enforcement)."""

from __future__ import annotations

import sys

#: Gymnasium id of the one-tenant shaping environment (shaping.sim.gym_env.ShapingEnv).
ENV_ID = "FedShape/Shaping-v0"


def register_envs() -> None:
    """Register the Gymnasium environment and its vector entry point; calling it again does nothing."""
    import gymnasium

    if ENV_ID in gymnasium.registry:
        return
    # No max_episode_steps here: the environment truncates itself at its own max_episode_steps,
    # and a TimeLimit wrapper on top would disagree with it when a scenario changes the length.
    gymnasium.register(
        id=ENV_ID,
        entry_point="shaping.sim.gym_env:ShapingEnv",
        vector_entry_point="shaping.sim.vector_env:ShapingVectorEnv",
    )


# Importing gymnasium (and numpy) costs ~0.3 s of CPU, most of what a `fedshape` command would spend: the
# package no longer imports it. Code that has imported gymnasium before this package finds the id registered
# as before; code that imports it later calls register_envs() before gymnasium.make(ENV_ID).
if "gymnasium" in sys.modules:
    register_envs()
