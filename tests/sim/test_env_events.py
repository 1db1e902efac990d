"""A scheduled path failure reaches every simulated backend at its step: the Gymnasium env, the vector env, the
PettingZoo parallel env and the control loop's SimBackend; the official checkers pass on a scenario with events.

Step k of an episode is its k-th simulated interval: the reset's warm-up is step 0, the n-th ``step`` call
returns step n. A failure from start_step 3 to end_step 6 makes the failed path's path_loss 1 in the
observations of steps 3, 4 and 5 and only there.
"""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

import shaping
from shaping.baselines import static_priority_plan
from shaping.config import PathEventConfig, ScenarioConfig
from shaping.control import SimBackend
from shaping.sim import ShapingEnv, ShapingParallelEnv
from shaping.sim.scenarios import load_scenario
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.spec import ActionLayout, ObservationLayout, TenantSpec

START, END, STEPS = 3, 6, 9
FAILED = [START <= k < END for k in range(STEPS)]


@pytest.fixture(scope="module")
def scenario() -> ScenarioConfig:
    """The default scenario with eth0 down from step 3 to 6 and eth1 degraded (half capacity) from step 2 to 7."""
    sc = load_scenario("default")
    sc.path_events = [
        PathEventConfig(path="eth0", start_step=START, end_step=END, capacity_factor=0.0),
        PathEventConfig(path="eth1", start_step=2, end_step=7, capacity_factor=0.5),
    ]
    return sc


def loss_index(spec: TenantSpec) -> tuple[int, int]:
    names = ObservationLayout(spec).names
    return names.index("path_loss[eth0]"), names.index("path_loss[eth1]")


def check_failure_steps(eth0: list[float], eth1: list[float]) -> None:
    """eth0 loses everything exactly in the failed steps; eth1, only degraded, never does."""
    assert [x == 1.0 for x in eth0] == FAILED, eth0
    assert all(x < 0.5 for x, f in zip(eth0, FAILED, strict=True) if not f), eth0
    assert all(x < 0.5 for x in eth1), eth1


def test_gym_env_sees_the_failure_at_its_step(scenario):
    env = ShapingEnv(scenario=scenario, tenant="gameco", max_episode_steps=20)
    i0, i1 = loss_index(env.tenant_spec)
    action = ActionLayout(env.tenant_spec).encode(static_priority_plan(env.tenant_spec))
    obs, _ = env.reset(seed=0)
    seen = [obs]
    for _ in range(1, STEPS):
        obs, *_ = env.step(action)
        seen.append(obs)
    check_failure_steps([float(o[i0]) for o in seen], [float(o[i1]) for o in seen])
    # A new episode replays the schedule from its start.
    obs, _ = env.reset(seed=1)
    assert float(obs[i0]) < 1.0


def test_vector_env_sees_the_failure_at_each_environments_step(scenario):
    env = ShapingVectorEnv(num_envs=2, scenario=scenario, tenant="gameco", max_episode_steps=20)
    i0, i1 = loss_index(env.view.observation.spec)
    action = ActionLayout(env.view.observation.spec).encode(static_priority_plan(env.view.observation.spec))
    obs, _ = env.reset(seed=0)
    seen = [obs]
    for _ in range(1, STEPS):
        obs, *_ = env.step(np.stack([action, action]))
        seen.append(obs)
    for b in range(2):
        check_failure_steps([float(o[b, i0]) for o in seen], [float(o[b, i1]) for o in seen])


def test_parallel_env_shows_every_tenant_the_failure_at_its_step(scenario):
    env = ShapingParallelEnv(scenario=scenario, max_episode_steps=20)
    obs, _ = env.reset(seed=0)
    seen = [obs]
    for _ in range(1, STEPS):
        obs, *_ = env.step({})  # every tenant on its scenario policy
        seen.append(obs)
    for agent in env.possible_agents:
        i0, i1 = loss_index(env.tenant_view(agent).observation.spec)
        check_failure_steps([float(o[agent][i0]) for o in seen], [float(o[agent][i1]) for o in seen])


def test_sim_backend_of_the_control_loop_sees_the_failure_at_its_step(scenario):
    backend = SimBackend(scenario, "gameco", seed=0)
    backend.apply(static_priority_plan(backend.spec))
    seen = [backend.observe() for _ in range(STEPS)]  # the first observe is the reset's warm-up: step 0
    check_failure_steps([float(o.paths.loss[0]) for o in seen], [float(o.paths.loss[1]) for o in seen])
    i0, _ = loss_index(backend.spec)
    assert [float(o.obs[i0]) == 1.0 for o in seen] == FAILED


def test_official_checkers_pass_on_a_scenario_with_events(scenario):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gymnasium.make(shaping.ENV_ID, scenario=scenario, max_episode_steps=20).unwrapped)
        parallel_api_test(ShapingParallelEnv(scenario=scenario, max_episode_steps=8), num_cycles=10)
    assert [str(w.message) for w in caught] == []
