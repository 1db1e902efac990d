"""Tests of the one-tenant Gymnasium environment and its registration."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import shaping
from shaping.config import ScenarioConfig
from shaping.sim import ShapingEnv
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import StepOutput
from shaping.spec import ActionLayout, ClassMetrics, HostMetrics, ObservationLayout, PathMetrics, PlanBatch, TenantSpec


@pytest.fixture(scope="module")
def scenario() -> ScenarioConfig:
    """The default scenario, loaded once (validating the YAML is the slow part of building an env)."""
    return load_scenario("default")


def expected_observation(spec: TenantSpec, out: StepOutput, k: int, env: int = 0) -> np.ndarray:
    """The spec's observation of tenant k, built straight from the simulator's output."""
    n = len(spec.classes)
    m = ClassMetrics(*(x[env, k, :n] for x in out.metrics))
    vms = [i for i, e in enumerate(spec.entities) if e.kind == "vm"]
    host = HostMetrics(out.host.cpu[env, k, vms], out.host.memory[env, k, vms])
    paths = PathMetrics(out.path_delay_ms[env], out.path_loss[env], out.path_delivered_mbps[env, k])
    plan = PlanBatch(*(x[env, k, :n] for x in out.plan))
    return ObservationLayout(spec).build(m, host, paths, plan).numpy()


def test_check_env_passes_without_warnings():
    env = gymnasium.make(shaping.ENV_ID, max_episode_steps=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_make_and_idempotent_registration():
    shaping.register_envs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering would warn about overriding the id
        shaping.register_envs()
    env = gymnasium.make(shaping.ENV_ID, tenant="bank")
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert isinstance(env.unwrapped, ShapingEnv)
    assert len(info["delivered_mbps"]) == 3  # bank has three classes
    env.close()


def test_spaces_follow_the_spec(scenario):
    env = ShapingEnv(scenario=scenario, tenant="saas")
    layout = ObservationLayout(env.tenant_spec)
    assert env.observation_space.shape == (layout.size,)
    assert env.observation_space.dtype == np.float32
    assert np.isfinite(env.observation_space.high).all()
    np.testing.assert_array_equal(env.action_space.nvec, ActionLayout(env.tenant_spec).nvec)


def _rollout(env: ShapingEnv, seed: int, steps: int) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards = [obs], []
    for _ in range(steps):
        obs, reward, *_ = env.step(env.action_space.sample())
        observations.append(obs)
        rewards.append(reward)
    return observations, rewards


def test_same_seed_same_trajectory(scenario):
    a = _rollout(ShapingEnv(scenario=scenario), seed=7, steps=4)
    b = _rollout(ShapingEnv(scenario=scenario), seed=7, steps=4)
    c = _rollout(ShapingEnv(scenario=scenario), seed=8, steps=4)
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[1] == b[1]
    assert not np.array_equal(a[0][1], c[0][1])


def test_truncation_at_max_episode_steps_and_never_terminated(scenario):
    env = ShapingEnv(scenario=scenario, max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env.reset()
    assert env.step(env.action_space.sample())[3] is False


def test_observation_is_the_tenant_speclayout_of_the_sim_metrics(scenario):
    env = ShapingEnv(scenario=scenario, tenant=1)
    obs, _ = env.reset(seed=3)
    assert env.last_output is not None
    np.testing.assert_array_equal(obs, expected_observation(env.tenant_spec, env.last_output, 1))
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
        np.testing.assert_array_equal(obs, expected_observation(env.tenant_spec, env.last_output, 1))
        assert env.observation_space.contains(obs)


def test_info_has_terms_violations_per_class_metrics_and_plan(scenario):
    env = ShapingEnv(scenario=scenario)
    env.reset(seed=0)
    action = env.action_space.sample()
    _, reward, _, _, info = env.step(action)
    classes = [c.name for c in env.tenant_spec.classes]
    for key in ("delivered_mbps", "p99_ms", "loss"):
        assert list(info[key]) == classes
    assert info["plan"] == env.view.action.decode(action)
    w = env.reward_config
    expected = (
        w.throughput * info["throughput"] + w.latency * info["latency"] + w.efficiency * info["efficiency"]
        - w.sla_penalty * info["sla_violations"]
    )
    assert reward == pytest.approx(expected, abs=1e-5)


def test_other_tenants_driven_by_callables_and_baselines(scenario):
    seen: list[np.ndarray] = []
    bank = ShapingEnv(scenario=scenario, tenant="bank")

    def policy(obs: np.ndarray) -> np.ndarray:
        seen.append(obs)
        return bank.action_space.sample()

    env = ShapingEnv(scenario=scenario, tenant="gameco", other_policies={"bank": policy, "saas": "fq_codel"})
    env.reset(seed=0)
    assert seen == []  # the warm-up interval runs the scenario policy
    env.step(env.action_space.sample())
    env.step(env.action_space.sample())
    assert len(seen) == 2
    assert all(bank.observation_space.contains(o) for o in seen)
    assert env.core.aqm.tolist() == [False, False, False, True]


def test_bad_other_policies_are_refused(scenario):
    with pytest.raises(ValueError, match="not uncontrolled tenants"):
        ShapingEnv(scenario=scenario, tenant="gameco", other_policies={"gameco": "fifo"})
    with pytest.raises(ValueError, match="not uncontrolled tenants"):
        ShapingEnv(scenario=scenario, other_policies={"nobody": "fifo"})
    with pytest.raises(KeyError, match="unknown baseline"):
        ShapingEnv(scenario=scenario, other_policies={"bank": "nonsense"})
