"""The reference arms of the federated comparison: local-only and centralized training, and static baselines.

Both training arms use the same local training as the Flower clients (shaping.agents.local_train)
with the same budget per round: local-only trains each tenant's own model on its own environment for
``local_iterations`` per round; centralized trains one model on the union of the tenants'
environments, ``local_iterations`` per tenant per round (round robin), i.e. the same environment steps
as the federation. Every round, each arm is evaluated on each tenant's held-out seeds as the clients do.
run_arms runs the arms side by side in worker processes: each is one single-threaded torch loop, and
a simulator step costs the same whatever the batch, so on 2 cores two arms take the time of one.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch

from shaping.agents.global_model import initial_model
from shaping.agents.local_train import evaluate, evaluate_baseline, local_train
from shaping.agents.universal import PaddedEnv, make_env
from shaping.fed_settings import RunSettings


def _eval_envs(s: RunSettings) -> list[PaddedEnv]:
    return [make_env(t, s.layout, s.eval_envs, episode_steps=max(s.eval_steps, 1)) for t in s.tenants]


def local_only(s: RunSettings) -> list[dict[str, Any]]:
    """Per round, each tenant's own model (trained alone) evaluated on its held-out seeds."""
    models = [initial_model(s.layout, s.hidden_sizes, s.seed, s.init_weights, s.init_norm_count) for _ in s.tenants]
    envs = [make_env(t, s.layout) for t in s.tenants]
    evals = _eval_envs(s)
    rounds = []
    for rnd in range(1, s.rounds + 1):
        per_tenant = {}
        for i, (task, model) in enumerate(zip(s.tenants, models, strict=True)):
            local_train(model, [envs[i]], s.local_iterations, s.round_ppo(rnd), seed=s.seed + 1000 * rnd + i,
                        proximal_mu=0.0)  # fmt: skip
            ev = evaluate(model, evals[i], s.eval_steps, s.eval_seed)
            per_tenant[task.name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
        rounds.append({"round": rnd, "eval": per_tenant})
    return rounds


def centralized(s: RunSettings) -> list[dict[str, Any]]:
    """Per round, one model trained on every tenant's environments, evaluated on each tenant's held-out seeds."""
    model = initial_model(s.layout, s.hidden_sizes, s.seed, s.init_weights, s.init_norm_count)
    envs = [make_env(t, s.layout) for t in s.tenants]
    evals = _eval_envs(s)
    rounds = []
    for rnd in range(1, s.rounds + 1):
        local_train(model, envs, s.local_iterations * len(envs), s.round_ppo(rnd), seed=s.seed + 1000 * rnd)
        per_tenant = {}
        for task, env in zip(s.tenants, evals, strict=True):
            ev = evaluate(model, env, s.eval_steps, s.eval_seed)
            per_tenant[task.name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
        rounds.append({"round": rnd, "eval": per_tenant})
    return rounds


def static_baselines(s: RunSettings, names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """baseline -> tenant -> {reward, sla_violation_rate}: the tenant runs the baseline's plan (as the nearest
    action) instead of the agent, on the same held-out seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    evals = _eval_envs(s)
    for name in names:
        out[name] = {}
        for task, env in zip(s.tenants, evals, strict=True):
            ev = evaluate_baseline(env, name, s.eval_steps, s.eval_seed)
            out[name][task.name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
    return out


def initial_policy(s: RunSettings) -> dict[str, dict[str, float]]:
    """tenant -> {reward, sla_violation_rate} of the model every arm starts from (init.weights, or the
    seeded random one), on the same held-out seeds: what the rounds add is measured against it."""
    model = initial_model(s.layout, s.hidden_sizes, s.seed, s.init_weights, s.init_norm_count)
    out = {}
    for task, env in zip(s.tenants, _eval_envs(s), strict=True):
        ev = evaluate(model, env, s.eval_steps, s.eval_seed)
        out[task.name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
    return out


def _one_thread() -> None:
    """Worker initializer: one torch thread per arm (the arms already share the cores between them)."""
    torch.set_num_threads(1)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def run_arms(s: RunSettings, *, local: bool, central: bool, baselines: list[str],
             workers: int = 2) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """The reference arms, the static baselines and the initial model: ({arm: result}, {arm: wall seconds}).

    Args:
        s: the federated run's settings (same tenants, budget and seeds).
        local, central: run the local-only / centralized arm.
        baselines: static baselines to evaluate.
        workers: processes running the arms side by side; 1 runs them here, one after the other.
    """
    jobs: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
    if local:
        jobs["local_only"] = (local_only, (s,))
    if central:
        jobs["centralized"] = (centralized, (s,))
    jobs["baselines"] = (static_baselines, (s, baselines))
    jobs["initial"] = (initial_policy, (s,))
    if workers <= 1:
        done = {name: _timed(fn, *args) for name, (fn, args) in jobs.items()}
    else:
        # spawn: a forked torch process may deadlock on its inherited thread pools.
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:  # fmt: skip
            futures: dict[str, Future[tuple[Any, float]]] = {
                name: pool.submit(_timed, fn, *args) for name, (fn, args) in jobs.items()
            }
            done = {name: f.result() for name, f in futures.items()}
    return {k: v[0] for k, v in done.items()}, {k: round(v[1], 1) for k, v in done.items()}
