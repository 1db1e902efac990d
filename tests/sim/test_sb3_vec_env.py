"""Tests of the Stable-Baselines3 VecEnv over the batched simulator: spaces, same-step resets, seeding, PPO."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from shaping.config import ScenarioConfig
from shaping.sim import ShapingEnv, ShapingVectorEnv
from shaping.sim.scenarios import load_scenario

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.env_checker import check_env  # noqa: E402 (after the importorskip)
from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor  # noqa: E402

from shaping.sim.sb3_vec_env import ShapingSB3VecEnv  # noqa: E402


@pytest.fixture(scope="module")
def scenario() -> ScenarioConfig:
    """The default scenario, loaded once (validating the YAML is the slow part of building an env)."""
    return load_scenario("default")


def _actions(env: ShapingSB3VecEnv, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, env.action_space.nvec, size=(env.num_envs, len(env.action_space.nvec)))


def test_sb3_check_env_passes_on_the_single_env(scenario):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(ShapingEnv(scenario=scenario, max_episode_steps=20))
    assert [str(w.message) for w in caught] == []


def test_spaces_are_the_single_env_spaces(scenario):
    env = ShapingSB3VecEnv(num_envs=3, scenario=scenario, tenant="bank")
    single = ShapingEnv(scenario=scenario, tenant="bank")
    assert env.observation_space == single.observation_space
    assert env.action_space == single.action_space
    assert env.render_mode is None
    obs = env.reset()
    assert obs.shape == (3, *single.observation_space.shape) and obs.dtype == np.float32
    assert all(env.observation_space.contains(o) for o in obs)


def test_episode_end_resets_in_the_same_step(scenario):
    env = ShapingSB3VecEnv(num_envs=3, scenario=scenario, max_episode_steps=2)
    ref = ShapingVectorEnv(num_envs=3, scenario=scenario, max_episode_steps=2)
    env.seed(4)
    np.testing.assert_array_equal(env.reset(), ref.reset(seed=4)[0])
    rng = np.random.default_rng(0)
    a = _actions(env, rng)
    obs, rewards, dones, infos = env.step(a)
    ref_obs, ref_rewards, _, _, _ = ref.step(a)
    np.testing.assert_array_equal(obs, ref_obs)
    np.testing.assert_array_equal(rewards, ref_rewards)
    assert not dones.any() and infos == [{}, {}, {}]
    a = _actions(env, rng)
    obs, rewards, dones, infos = env.step(a)
    ref_obs, ref_rewards, _, ref_trunc, _ = ref.step(a)
    assert dones.all() and ref_trunc.all()
    np.testing.assert_array_equal(rewards, ref_rewards)
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True
        np.testing.assert_array_equal(info["terminal_observation"], ref_obs[i])
    # The returned observation starts the next episode: its warm-up interval only.
    assert env.vector_env.core.sim.state.t.tolist() == [1, 1, 1]
    assert env.vector_env.elapsed_steps.tolist() == [0, 0, 0]
    assert all(env.observation_space.contains(o) for o in obs)
    _, _, dones, _ = env.step(_actions(env, rng))
    assert not dones.any()


def test_seed_makes_the_batch_reproducible(scenario):
    runs = []
    for _ in range(2):
        env = ShapingSB3VecEnv(num_envs=2, scenario=scenario, max_episode_steps=3)
        env.seed(9)
        trace = [env.reset()]
        rng = np.random.default_rng(9)
        for _ in range(4):  # across an episode end
            trace.append(env.step(_actions(env, rng))[0])
        runs.append(np.stack(trace))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_attributes_and_methods_are_the_vector_envs(scenario):
    env = ShapingSB3VecEnv(num_envs=2, scenario=scenario, tenant="bank")
    assert env.get_attr("tenant") == [1, 1]
    assert env.get_attr("max_episode_steps", indices=[1]) == [scenario.episode_steps]
    env.set_attr("aqm", True)
    assert env.vector_env.aqm
    with pytest.raises(ValueError, match="share one simulator"):
        env.set_attr("aqm", False, indices=[0])
    assert env.env_is_wrapped(VecMonitor) == [False, False]
    obs = env.env_method("reset_torch", seed=1)
    assert len(obs) == 2 and obs[0].shape == (2, env.observation_space.shape[0])


def test_environments_out_of_step_are_refused(scenario):
    env = ShapingSB3VecEnv(num_envs=2, scenario=scenario, max_episode_steps=3)
    env.reset()
    env.vector_env.elapsed_steps[0] = 2
    with pytest.raises(RuntimeError, match="share episodes"):
        env.step(_actions(env, np.random.default_rng(0)))


def test_ppo_learns_a_few_hundred_steps_through_monitor_and_nan_check(scenario):
    base = ShapingSB3VecEnv(num_envs=4, scenario=scenario, max_episode_steps=16)
    env = VecMonitor(VecCheckNan(base, raise_exception=True))
    model = sb3.PPO("MlpPolicy", env, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=384)
    assert model.num_timesteps == 384
    # 384 steps / 4 environments = 96 steps per environment: 6 episodes of 16 each, all recorded.
    assert len(model.ep_info_buffer) == 4 * 6
    assert {e["l"] for e in model.ep_info_buffer} == {16}
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (4, len(env.action_space.nvec))
