"""Tests of the batched vector environment: spaces, NEXT_STEP autoreset, torch API, determinism."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import shaping
from shaping.config import ScenarioConfig
from shaping.sim import ShapingEnv, ShapingVectorEnv
from shaping.sim.scenarios import load_scenario


@pytest.fixture(scope="module")
def scenario() -> ScenarioConfig:
    """The default scenario, loaded once (validating the YAML is the slow part of building an env)."""
    return load_scenario("default")


def test_make_vec_uses_the_vector_entry_point():
    envs = gymnasium.make_vec(shaping.ENV_ID, num_envs=3, max_episode_steps=4)
    assert isinstance(envs.unwrapped, ShapingVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert info["throughput"].shape == (3,) and info["_throughput"].all()
    envs.close()


def test_batched_spaces_match_the_single_env(scenario):
    envs = ShapingVectorEnv(scenario=scenario, num_envs=4, tenant="bank")
    single = ShapingEnv(scenario=scenario, tenant="bank")
    assert envs.single_observation_space == single.observation_space
    assert envs.single_action_space == single.action_space
    assert envs.observation_space.shape == (4, *single.observation_space.shape)
    assert envs.action_space.shape == (4, *single.action_space.shape)


def test_autoreset_next_step_for_all_envs(scenario):
    envs = ShapingVectorEnv(scenario=scenario, num_envs=3, max_episode_steps=2)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    _, _, term, trunc, _ = envs.step(envs.action_space.sample())
    assert not trunc.any() and not term.any()
    _, _, _, trunc, _ = envs.step(envs.action_space.sample())
    assert trunc.all()
    obs, reward, term, trunc, _ = envs.step(envs.action_space.sample())
    # The autoreset step: a fresh episode's first observation, reward 0, nothing done.
    assert (reward == 0).all() and not trunc.any() and not term.any()
    assert envs.observation_space.contains(obs)
    assert envs.core.sim.state.t.tolist() == [1, 1, 1]  # only the warm-up interval of the new episode
    assert envs.elapsed_steps.tolist() == [0, 0, 0]
    _, reward, _, trunc, _ = envs.step(envs.action_space.sample())
    assert (reward != 0).any() and not trunc.any()


def test_autoreset_is_partial(scenario):
    envs = ShapingVectorEnv(scenario=scenario, num_envs=3, max_episode_steps=5)
    envs.reset(seed=0)
    envs.elapsed_steps[0] = 4  # put env 0 one step from its end
    _, _, _, trunc, _ = envs.step(envs.action_space.sample())
    assert trunc.tolist() == [True, False, False]
    t_before = envs.core.sim.state.t.clone()
    _, reward, _, trunc, _ = envs.step(envs.action_space.sample())
    assert reward[0] == 0 and not trunc.any()
    assert envs.core.sim.state.t[0] == 1
    assert (envs.core.sim.state.t[1:] == t_before[1:] + 1).all()
    assert envs.elapsed_steps.tolist() == [0, 2, 2]


def test_torch_actions_and_torch_step_match_numpy(scenario):
    a = ShapingVectorEnv(scenario=scenario, num_envs=2)
    b = ShapingVectorEnv(scenario=scenario, num_envs=2)
    obs_a, _ = a.reset(seed=5)
    obs_b = b.reset_torch(seed=5)
    assert isinstance(obs_b, torch.Tensor) and obs_b.dtype == torch.float32
    np.testing.assert_array_equal(obs_a, obs_b.numpy())
    a.action_space.seed(5)
    for _ in range(3):
        actions = a.action_space.sample()
        obs_a, rew_a, _, trunc_a, _ = a.step(torch.as_tensor(actions))
        res = b.step_torch(torch.as_tensor(actions))
        np.testing.assert_array_equal(obs_a, res.obs.numpy())
        np.testing.assert_array_equal(rew_a, res.reward.numpy())
        np.testing.assert_array_equal(trunc_a, res.truncated.numpy())


def test_vector_env_of_one_equals_the_gym_env(scenario):
    envs = ShapingVectorEnv(scenario=scenario, num_envs=1, tenant="streamer")
    env = ShapingEnv(scenario=scenario, tenant="streamer")
    obs_v, _ = envs.reset(seed=11)
    obs, _ = env.reset(seed=11)
    np.testing.assert_array_equal(obs_v[0], obs)
    env.action_space.seed(11)
    for _ in range(3):
        action = env.action_space.sample()
        obs, reward, *_ = env.step(action)
        obs_v, reward_v, *_ = envs.step(action[None])
        np.testing.assert_array_equal(obs_v[0], obs)
        assert reward_v[0] == np.float32(reward)


def test_same_seed_same_batch_trajectory(scenario):
    runs = []
    for _ in range(2):
        envs = ShapingVectorEnv(scenario=scenario, num_envs=3)
        obs, _ = envs.reset(seed=2)
        envs.action_space.seed(2)
        trace = [obs]
        for _ in range(3):
            trace.append(envs.step(envs.action_space.sample())[0])
        runs.append(np.stack(trace))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_bad_actions_and_reset_mask_are_refused(scenario):
    envs = ShapingVectorEnv(scenario=scenario, num_envs=2)
    envs.reset(seed=0)
    n = envs.single_action_space.shape[0]
    with pytest.raises(ValueError, match="outside"):
        envs.step(np.full((2, n), 99))
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.zeros((3, n), dtype=np.int64))
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.array([True, False])})


def test_aqm_switches_codel_on_the_controlled_tenant_only(scenario):
    envs = ShapingVectorEnv(scenario=scenario, num_envs=2, tenant="bank", other_policies={"saas": "fq_codel"})
    assert not envs.aqm  # an agent's action cannot switch CoDel, so the controlled tenant starts without it
    assert envs.core.aqm.tolist() == [False, False, False, True]  # saas runs fq_codel, with CoDel
    envs.aqm = True
    assert envs.aqm and envs.core.aqm.tolist() == [False, True, False, True]
    envs.aqm = False
    assert envs.core.aqm.tolist() == [False, False, False, True]


def test_returned_truncations_do_not_change_on_reset(scenario):
    envs = ShapingVectorEnv(scenario=scenario, num_envs=2, max_episode_steps=1)
    envs.reset(seed=0)
    _, _, _, trunc, _ = envs.step(envs.action_space.sample())
    envs.reset()
    assert trunc.tolist() == [True, True]
