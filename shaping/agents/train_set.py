"""PPO for the set policy: one shared SetActorCritic trained on several tenants of several scenarios at once.

The tenants may differ in classes, paths and action levels: the model is bound to each (BoundSetPolicy)
and the iterations visit them in turn (one rollout and one update each, round robin), with the steps of
shaping.agents.ppo (collect_rollout, ppo_update) and the bookkeeping of shaping.agents.train (return
scaling, seeded resets, evaluation, the CSV log, the wall-clock stop)::

    tasks = [TenantTask("default", "gameco"), TenantTask("single_path", "devops"), TenantTask("datacenter", "search")]
    result = train_set_ppo(tasks, PPOConfig(total_timesteps=200_000), TrainConfig(), out_dir=Path("outputs/set"))
    make_policy(f"set:{result.best_path}")  # drives any tenant of any scenario

The best model (by the mean greedy evaluation reward over the tasks) and the last are written with
save_set_policy.

Before PPO the model can start from behaviour cloning (``clone_teachers``) of a teacher per task:
adaptive_heuristic, step by step (``heuristic_teacher``), the static baseline that serves that tenant best
(``pick_teachers``, scored on seeds of its own), or the best constant plan a search finds for that tenant,
starting from every baseline's plan (``tune_teachers``, tuned_static's search).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from shaping.agents.imitation import CloneStats, TeacherFn, clone_actions, constant_teacher
from shaping.agents.ppo import collect_rollout, linear_lr, make_optimizer, ppo_update, set_lr
from shaping.agents.set_policy import BoundSetPolicy, SetActorCritic, SetPolicyConfig, bind, save_set_policy
from shaping.agents.train import (
    CSV_FIELDS,
    EvalResult,
    ReturnScaler,
    TrainLogger,
    evaluate_agent,
    make_eval_env,
    reset_envs,
    wall_clock_spent,
)
from shaping.agents.universal import TenantTask
from shaping import heuristic
from shaping.baselines import get_baseline
from shaping.config import PPOConfig, RewardConfig, TrainConfig
from shaping.heuristic import HeuristicSettings, TenantRules
from shaping.heuristic_policy import advance
from shaping.spec import ActionLayout, TenantSpec, tenant_spec
from shaping.sim.scenarios import load_scenario
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.tuned.cache import load_or_tune
from shaping.tuned.search import TunedPlan, TuneSettings, tune_static
from shaping.tuned.validation import ValidationSettings


@dataclass
class SetTrainResult:
    """What train_set_ppo produced."""

    model: SetActorCritic
    """The model after the last iteration."""
    iterations: int
    """Iterations run (one rollout of one task each)."""
    planned_iterations: int
    """Iterations the step budget asked for (more than ``iterations`` when the wall-clock cap stopped it)."""
    env_steps: int
    """Environment steps collected over every task."""
    wall_s: float
    """Wall-clock time of the loop, seconds."""
    best_eval: EvalResult | None
    """The best evaluation, means over the tasks; None if none ran."""
    evals: dict[str, EvalResult] = field(default_factory=dict)
    """Each task's evaluation at the best one, by TenantTask.name."""
    best_path: Path | None = None
    """The best model (out_dir/best.pt)."""
    last_path: Path | None = None
    """The model after the last iteration (out_dir/last.pt)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per iteration, the CSV rows."""


def _mean_eval(evals: Sequence[EvalResult]) -> EvalResult:
    keys = vars(evals[0])
    return EvalResult(**{k: sum(getattr(e, k) for e in evals) / len(evals) for k in keys})


def evaluate_tasks(
    envs: Sequence[ShapingVectorEnv], agents: Sequence[BoundSetPolicy], tasks: Sequence[TenantTask], train: TrainConfig
) -> dict[str, EvalResult]:
    """Greedy evaluation of the bound model on each task's evaluation batch."""
    out = {}
    for env, agent, task in zip(envs, agents, tasks, strict=True):
        agent.eval()
        out[task.name] = evaluate_agent(env, agent, train.eval_steps, train.eval_seed)
    return out


def baseline_action(spec: TenantSpec, baseline: str) -> torch.Tensor:
    """(D,) the tenant's flat action that encodes a static baseline's plan.

    Raises:
        ValueError: the baseline runs CoDel on its leaves (fq_codel), which no action expresses.
    """
    base = get_baseline(baseline)
    if base.aqm:
        raise ValueError(f"baseline {baseline!r} runs CoDel, which no action expresses: it cannot be a teacher")
    return torch.as_tensor(ActionLayout(spec).encode(base.plan(spec)))


def pick_teachers(
    tasks: Sequence[TenantTask],
    candidates: Sequence[str],
    *,
    envs: int = 8,
    steps: int = 100,
    seed: int = 20_000,
    reward: RewardConfig | None = None,
) -> list[str]:
    """Per task, the candidate baseline with the lowest SLA violation rate (ties: the highest reward), each run
    as its constant action for `steps` steps of a batch of `envs` seeded environments (use seeds that neither
    training nor evaluation uses)."""
    if not candidates:
        raise ValueError("pick_teachers needs at least one candidate baseline")
    picks = []
    for task in tasks:
        env = ShapingVectorEnv(envs, load_scenario(task.scenario), tenant=task.tenant, reward=reward,
                               max_episode_steps=steps)  # fmt: skip
        spec = env.view.observation.spec
        scores = {}
        for name in candidates:
            res = evaluate_agent(env, constant_teacher(baseline_action(spec, name)), steps, seed)
            scores[name] = (res.sla_violation_rate, -res.reward)
        picks.append(min(candidates, key=lambda name: scores[name]))
    return picks


def baseline_teachers(tasks: Sequence[TenantTask], baselines: Sequence[str]) -> list[torch.Tensor]:
    """Each task's teacher action: its baseline's plan for the task's tenant (baseline_action)."""
    return [baseline_action(tenant_spec(load_scenario(t.scenario), t.tenant), name)
            for t, name in zip(tasks, baselines, strict=True)]  # fmt: skip


def tune_teachers(
    tasks: Sequence[TenantTask], settings: TuneSettings, *, cache_dir: Path | None = None, progress: bool = False
) -> list[TunedPlan]:
    """Per task, tuned_static's search for that tenant alone (shaping.tuned.search.tune_static, no validation):
    the best constant action found from every static baseline's plan, on settings' seeds. Its teacher action
    is ``torch.as_tensor(tuned.actions[0])``. With cache_dir, each search is read from there when its key (the
    scenario's whole config, the tenant, the settings) matches, else run and written there.

    Raises:
        ValueError: settings search with CoDel on, which no action expresses.
    """
    if any(settings.aqm):
        raise ValueError(f"a teacher's search must keep CoDel off (aqm=(False,)), got aqm={settings.aqm}")
    unvalidated = ValidationSettings(seeds=0)
    out = []
    for task in tqdm(tasks, desc="tuning teachers", disable=not progress):
        scenario = load_scenario(task.scenario)
        if cache_dir is None:
            out.append(tune_static(scenario, settings, controlled=[task.tenant], validation=unvalidated))
        else:
            # verify=False: a teacher is a starting point, not a reported result; the key already changes with
            # the scenario and the settings.
            out.append(load_or_tune(scenario, settings, cache_dir=cache_dir, controlled=[task.tenant],
                                    verify=False, validation=unvalidated))  # fmt: skip
    return out


def heuristic_teacher(env: ShapingVectorEnv, settings: HeuristicSettings | None = None) -> TeacherFn:
    """adaptive_heuristic as a teacher of env's tenant: each step its controller reads the environment's last
    interval (as the benchmark's AdaptiveHeuristicPolicy does) and its plan is encoded to the nearest action.
    A new episode (elapsed steps 0) starts the controller again from the tenant's static rules."""
    s = settings or HeuristicSettings()
    spec = env.view.observation.spec
    rules, layout = TenantRules.of(spec, s, env.device), ActionLayout(spec)
    state = heuristic.initial_state(rules, s, env.num_envs)

    def act(nobs: torch.Tensor) -> torch.Tensor:
        nonlocal state
        last = env.last_output
        fresh = torch.as_tensor(env.elapsed_steps == 0, device=env.device) | (last is None)
        state = advance(rules, s, state, env.view, last, fresh)
        return layout.encode_batch(heuristic.plan(rules, state)).to(nobs.device)

    return act


def clone_teachers(
    model: SetActorCritic,
    tasks: Sequence[TenantTask],
    teachers: Sequence[torch.Tensor | Callable[[ShapingVectorEnv], TeacherFn]],
    iterations: int,
    cfg: PPOConfig,
    *,
    seed: int = 0,
    smoothing: float = 0.2,
    reward: RewardConfig | None = None,
) -> CloneStats:
    """Behaviour cloning of each task's teacher into the shared model (shaping.agents.imitation), one rollout of
    cfg.num_steps steps per task in turn; returns the fit on each task's last rollout. A teacher is a constant
    flat action (baseline_teachers, tune_teachers) or a factory of a per-step teacher for the task's
    environment (heuristic_teacher)."""
    envs = [ShapingVectorEnv(t.num_envs, load_scenario(t.scenario), tenant=t.tenant, reward=reward) for t in tasks]
    agents = [bind(model, env.view.observation.spec) for env in envs]
    acts = [t(env) if callable(t) else t for t, env in zip(teachers, envs, strict=True)]
    return clone_actions(model, agents.__getitem__, envs, acts, iterations, cfg, seed=seed, smoothing=smoothing)


def train_set_ppo(
    tasks: Sequence[TenantTask],
    cfg: PPOConfig,
    train: TrainConfig | None = None,
    *,
    model_config: SetPolicyConfig | None = None,
    model: SetActorCritic | None = None,
    reward: RewardConfig | None = None,
    out_dir: Path | None = None,
) -> SetTrainResult:
    """Train one set policy on several tenants (each on its scenario, the other tenants on their baselines).

    Args:
        tasks: the tenants, each with its scenario and its batch size (num_envs).
        cfg: PPO hyperparameters; about total_timesteps steps are collected over all tasks.
        train: the loop's settings (seeds, evaluation, logging; num_envs comes from the tasks); None: defaults.
        model_config: sizes of a new model; ignored when ``model`` is given.
        model: a model to go on training (e.g. from load_set_policy).
        reward: reward weights; None: RewardConfig defaults.
        out_dir: where train.csv, tensorboard/, best.pt and last.pt go; None: nothing is written.
    """
    if not tasks:
        raise ValueError("train_set_ppo needs at least one task")
    train = train or TrainConfig()
    weights = reward or RewardConfig()
    torch.manual_seed(train.seed)
    scenarios = [load_scenario(t.scenario) for t in tasks]
    envs = [
        ShapingVectorEnv(t.num_envs, sc, tenant=t.tenant, reward=weights, device=train.device,
                         max_episode_steps=train.episode_steps)
        for t, sc in zip(tasks, scenarios, strict=True)
    ]  # fmt: skip
    eval_envs = [
        make_eval_env([sc], t.tenant, weights, train, env.max_episode_steps)
        for t, sc, env in zip(tasks, scenarios, envs, strict=True)
    ]
    net = (model or SetActorCritic(model_config)).to(envs[0].device)
    agents = [bind(net, env.view.observation.spec) for env in envs]
    optimizer = make_optimizer(net, cfg.learning_rate)
    mean_batch = sum(env.num_envs for env in envs) * cfg.num_steps / len(envs)
    num_iterations = max(1, round(cfg.total_timesteps / mean_batch))
    next_obs = reset_envs(envs, train)
    scalers = [ReturnScaler(env.num_envs, cfg.gamma, env.device) for env in envs] if train.norm_reward else None
    logger = TrainLogger(out_dir, train.tensorboard, CSV_FIELDS)
    best: EvalResult | None = None
    best_evals: dict[str, EvalResult] = {}
    best_path = out_dir / "best.pt" if out_dir is not None else None
    start = time.perf_counter()
    env_steps = iteration = 0
    bar = tqdm(total=num_iterations, disable=not train.progress, unit="it", desc="set-ppo")
    try:
        for iteration in range(1, num_iterations + 1):
            k = (iteration - 1) % len(envs)
            if cfg.anneal_lr:
                set_lr(optimizer, linear_lr(cfg.learning_rate, iteration, num_iterations))
            net.train()
            rollout, next_obs[k] = collect_rollout(envs[k], agents[k], next_obs[k], cfg.num_steps)
            raw_reward = float(rollout.rewards[rollout.valid].mean())
            if scalers is not None:
                rollout = scalers[k](rollout)
            stats = ppo_update(agents[k], optimizer, rollout, cfg)
            env_steps += envs[k].num_envs * cfg.num_steps
            wall_s = time.perf_counter() - start
            row: dict[str, Any] = {
                "iteration": iteration, "env_steps": env_steps, "wall_s": wall_s, "scenario": tasks[k].name,
                "rollout_reward": raw_reward, "reward_scale": scalers[k].scale if scalers is not None else 1.0,
                **{key: stats[key] for key in CSV_FIELDS if key in stats},
            }  # fmt: skip
            over = wall_clock_spent(train, wall_s, iteration, num_iterations, "set-policy training")
            if (train.eval_every and iteration % train.eval_every == 0) or over or iteration == num_iterations:
                evals = evaluate_tasks(eval_envs, agents, tasks, train)
                ev = _mean_eval(list(evals.values()))
                row.update({f"eval_{key}": value for key, value in vars(ev).items()})
                if best is None or ev.reward > best.reward:
                    best, best_evals = ev, evals
                    if best_path is not None:
                        save_set_policy(best_path, net, {"tasks": [t.name for t in tasks], "iteration": iteration,
                                                         "env_steps": env_steps, "eval_reward": ev.reward})  # fmt: skip
            logger.log(row)
            bar.update(1)
            if over:
                break
    finally:
        bar.close()
        logger.close()
    net.eval()
    last_path = None
    if out_dir is not None:
        extra = {"tasks": [t.name for t in tasks], "iteration": iteration, "env_steps": env_steps}
        last_path = save_set_policy(out_dir / "last.pt", net, extra)
    return SetTrainResult(
        model=net, iterations=iteration, planned_iterations=num_iterations, env_steps=env_steps,
        wall_s=time.perf_counter() - start, best_eval=best, evals=best_evals,
        best_path=best_path if best is not None else None, last_path=last_path, history=logger.rows,
    )  # fmt: skip
