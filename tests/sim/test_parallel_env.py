"""Tests of the PettingZoo parallel environment (every tenant an agent)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from shaping.config import ScenarioConfig
from shaping.sim import ShapingParallelEnv, parallel_env
from shaping.sim.scenarios import load_scenario
from tests.sim.test_gym_env import expected_observation


@pytest.fixture(scope="module")
def scenario() -> ScenarioConfig:
    """The default scenario, loaded once (validating the YAML is the slow part of building an env)."""
    return load_scenario("default")


def test_parallel_api_test_passes_without_warnings(scenario):
    env = parallel_env(scenario=scenario, max_episode_steps=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=10)
    assert [str(w.message) for w in caught] == []


def test_agents_are_tenants_with_their_own_spaces(scenario):
    env = parallel_env(scenario=scenario)
    assert isinstance(env, ShapingParallelEnv)
    assert env.possible_agents == [t.name for t in scenario.tenants]
    assert env.render_mode is None
    sizes = {a: env.action_space(a).shape for a in env.possible_agents}
    assert sizes["gameco"] != sizes["bank"]  # four classes against three
    assert env.observation_space("bank") is env.observation_space("bank")


def _rollout(scenario: ScenarioConfig, seed: int) -> list[dict[str, np.ndarray]]:
    env = parallel_env(scenario=scenario, max_episode_steps=10)
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for i, a in enumerate(env.possible_agents):
        env.action_space(a).seed(seed + i)
    for _ in range(3):
        obs, *_ = env.step({a: env.action_space(a).sample() for a in env.agents})
        trace.append(obs)
    return trace


def test_same_seed_same_trajectory(scenario):
    a, b = _rollout(scenario, 4), _rollout(scenario, 4)
    for x, y in zip(a, b, strict=True):
        for agent in x:
            np.testing.assert_array_equal(x[agent], y[agent])


def test_observations_are_the_tenant_speclayout_and_episodes_truncate_together(scenario):
    env = parallel_env(scenario=scenario, max_episode_steps=2)
    obs, _ = env.reset(seed=1)
    for _ in range(2):
        assert env.last_output is not None
        for k, agent in enumerate(env.possible_agents):
            spec = env.tenant_view(agent).observation.spec
            np.testing.assert_array_equal(obs[agent], expected_observation(spec, env.last_output, k))
        obs, rewards, terms, truncs, _ = env.step({a: env.action_space(a).sample() for a in env.agents})
        assert set(rewards) == set(env.possible_agents) and not any(terms.values())
    assert all(truncs.values()) and env.agents == []


def test_missing_action_follows_the_scenario_policy(scenario):
    env = parallel_env(scenario=scenario, max_episode_steps=5)
    env.reset(seed=0)
    actions = {a: env.action_space(a).sample() for a in env.agents if a != "bank"}
    _, _, _, _, infos = env.step(actions)
    bank = env.tenant_view("bank")
    assert infos["bank"]["plan"] == env.core.default_plan.plan(0, bank.index, bank.observation.spec)
    assert infos["gameco"]["plan"] == env.tenant_view("gameco").action.decode(actions["gameco"])
