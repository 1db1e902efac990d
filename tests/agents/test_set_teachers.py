"""Each task's best static baseline as its teacher, and behaviour cloning of those teachers into the set policy."""

from __future__ import annotations

import pytest
import torch

from shaping.agents.set_policy import SetActorCritic, SetPolicyConfig, bind
from shaping.agents.train import evaluate_agent
from shaping.agents.train_set import (
    baseline_action,
    baseline_teachers,
    clone_teachers,
    heuristic_teacher,
    pick_teachers,
    tune_teachers,
)
from shaping.heuristic import HeuristicSettings, TenantRules
from shaping import heuristic
from shaping.agents.universal import TenantTask
from shaping.config import PPOConfig
from shaping.sim.scenarios import load_scenario
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.spec import ActionLayout, tenant_spec
from shaping.tuned.search import TuneSettings

FAST = PPOConfig(num_steps=8, learning_rate=1e-2, update_epochs=4, num_minibatches=2)
SMALL = SetPolicyConfig(d_model=32, n_heads=2, d_ff=64, d_key=16)


def test_baseline_action_encodes_the_plan_and_refuses_codel():
    spec = tenant_spec(load_scenario("default"), "gameco")
    action = baseline_action(spec, "static_priority")
    assert action.shape == (len(ActionLayout(spec).nvec),)
    assert not torch.equal(action, baseline_action(spec, "fifo"))
    with pytest.raises(ValueError, match="CoDel"):
        baseline_action(spec, "fq_codel")


def test_the_teacher_is_the_candidate_with_the_fewest_sla_violations():
    tasks = [TenantTask("small_congested", "shop", 2), TenantTask("default", "gameco", 2)]
    candidates = ["fifo", "static_priority", "greedy_premium"]
    picks = pick_teachers(tasks, candidates, envs=2, steps=20, seed=3)
    assert len(picks) == len(tasks) and set(picks) <= set(candidates)
    for task, pick in zip(tasks, picks, strict=True):
        env = ShapingVectorEnv(2, load_scenario(task.scenario), tenant=task.tenant, max_episode_steps=20)
        spec = env.view.observation.spec
        sla = {}
        for name in candidates:
            action = baseline_action(spec, name)
            sla[name] = evaluate_agent(env, lambda obs, a=action: a.expand(obs.shape[0], -1), 20, 3).sla_violation_rate
        assert sla[pick] == min(sla.values())
    assert pick_teachers(tasks[:1], ["fair_share"], envs=1, steps=2) == ["fair_share"]


def test_cloning_teaches_each_tenant_its_own_teacher():
    tasks = [TenantTask("small_congested", "shop", 4), TenantTask("edge_gaming", "mobilegames", 4)]
    teachers = ["static_priority", "fair_share"]
    torch.manual_seed(0)
    model = SetActorCritic(SMALL)
    stats = clone_teachers(model, tasks, baseline_teachers(tasks, teachers), 24, FAST, seed=1, smoothing=0.0)
    assert stats.iterations == 24 and stats.accuracy > 0.9
    for task, teacher in zip(tasks, teachers, strict=True):
        env = ShapingVectorEnv(4, load_scenario(task.scenario), tenant=task.tenant)
        agent = bind(model, env.view.observation.spec)
        target = baseline_action(agent.binding.spec, teacher)
        env.reset_torch(seed=123)  # seeds never trained on
        obs = env.step_torch(target.expand(env.num_envs, -1)).obs
        teachable = agent._allowed[torch.arange(len(target)), target]  # choices the envelope allows
        assert float((agent.act(obs) == target)[:, teachable].float().mean()) > 0.9


def test_a_searched_teacher_is_at_least_as_good_as_every_baseline_on_its_seeds():
    tasks = [TenantTask("small_congested", "shop", 2)]
    settings = TuneSettings(population=4, generations=1, seeds=2, steps=10, seed=5, polish_rounds=1, aqm=(False,))
    (tuned,) = tune_teachers(tasks, settings)
    assert tuned.controlled == ("shop",) and not tuned.aqm
    # The search starts from every baseline's plan (CoDel off), so none beats its pick on the same seeds.
    assert tuned.sla_violation_rate <= min(b.sla_violation_rate for b in tuned.baselines.values() if not b.aqm)
    spec = tenant_spec(load_scenario("small_congested"), "shop")
    assert len(tuned.actions[0]) == len(ActionLayout(spec).nvec)
    with pytest.raises(ValueError, match="CoDel off"):
        tune_teachers(tasks, TuneSettings(population=4, generations=1, seeds=1, steps=2, aqm=(False, True)))


def test_baseline_teachers_are_the_baselines_actions_for_each_tenant():
    tasks = [TenantTask("small_congested", "shop", 2), TenantTask("default", "gameco", 2)]
    actions = baseline_teachers(tasks, ["static_priority", "fifo"])
    for task, name, action in zip(tasks, ["static_priority", "fifo"], actions, strict=True):
        assert torch.equal(action, baseline_action(tenant_spec(load_scenario(task.scenario), task.tenant), name))


def test_searched_teachers_are_found_again_in_their_cache(tmp_path):
    tasks = [TenantTask("small_congested", "shop", 2)]
    settings = TuneSettings(population=4, generations=1, seeds=1, steps=4, seed=5, polish_rounds=0, aqm=(False,))
    (first,) = tune_teachers(tasks, settings, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    written = path.stat().st_mtime_ns
    (again,) = tune_teachers(tasks, settings, cache_dir=tmp_path)
    assert again.actions == first.actions and path.stat().st_mtime_ns == written


def test_the_heuristic_teacher_starts_on_the_static_rules_and_then_reacts():
    env = ShapingVectorEnv(3, load_scenario("edge_gaming"), tenant="arena", max_episode_steps=30)
    spec, layout = env.view.observation.spec, ActionLayout(env.view.observation.spec)
    teach = heuristic_teacher(env)
    obs = env.reset_torch(seed=4)
    rules = TenantRules.of(spec, HeuristicSettings())
    home = layout.encode_batch(heuristic.plan(rules, heuristic.initial_state(rules, HeuristicSettings(), 3)))
    actions = [teach(obs)]
    assert torch.equal(actions[0], home)  # an episode starts from the tenant's static rules
    for _ in range(29):
        obs = env.step_torch(actions[-1]).obs
        actions.append(teach(obs))
    assert all(a.shape == (3, len(layout.nvec)) for a in actions)
    assert any(not torch.equal(a, home) for a in actions)  # on a congested edge it changes the plan


def test_cloning_a_per_step_teacher_fits_its_changing_actions():
    tasks = [TenantTask("edge_gaming", "arena", 4)]
    torch.manual_seed(0)
    model = SetActorCritic(SMALL)
    stats = clone_teachers(model, tasks, [heuristic_teacher], 24, FAST, seed=1, smoothing=0.0)
    assert stats.iterations == 24 and stats.accuracy > 0.8
