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

import logging
import multiprocessing
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

from shaping.agents.global_model import initial_model
from shaping.agents.local_train import evaluate, evaluate_baseline, local_train
from shaping.agents.universal import PaddedEnv, make_env
from shaping.fed_settings import RunSettings

log = logging.getLogger(__name__)


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


_started: Any = None  # a worker's queue of "arm started" notes to the parent (set by _init_worker)


def _init_worker(started: Any) -> None:
    """Worker initializer: one torch thread per arm (the arms already share the cores between them), and
    the queue on which the worker says when it starts an arm."""
    global _started
    torch.set_num_threads(1)
    _started = started


def _timed(name: str, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    if _started is not None:
        _started.put(name)
    else:
        log.info("arm %s: started", name)
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def _log_started(started: Any) -> None:
    """Log the arms the workers said they started since the last call."""
    while True:
        try:
            log.info("arm %s: started", started.get_nowait())
        except queue.Empty:
            return


def _in_pool(jobs: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]], workers: int) -> dict[str, tuple[Any, float]]:
    """Run the jobs in `workers` processes; log each arm's start and finish (with its wall time) as they happen."""
    ctx = multiprocessing.get_context("spawn")  # a forked torch process may deadlock on its inherited thread pools
    started = ctx.Queue()
    done: dict[str, tuple[Any, float]] = {}
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(started,)) as pool:  # fmt: skip
        names = {pool.submit(_timed, name, fn, *args): name for name, (fn, args) in jobs.items()}
        pending = set(names)
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            _log_started(started)
            for f in finished:
                done[names[f]] = f.result()
                log.info("arm %s: finished in %.1f s", names[f], done[names[f]][1])
    return {name: done[name] for name in jobs}


def run_arms(s: RunSettings, *, local: bool, central: bool, baselines: list[str],
             workers: int = 2) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """The reference arms, the static baselines and the initial model: ({arm: result}, {arm: wall seconds}).

    Each arm's start and finish (with its wall time) is logged as it happens.

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
    procs = "here" if workers <= 1 else f"in {min(workers, len(jobs))} worker processes"
    log.info("training and evaluating %s (%d rounds) %s", ", ".join(jobs), s.rounds, procs)
    if workers <= 1:
        done = {}
        for name, (fn, args) in jobs.items():
            done[name] = _timed(name, fn, *args)
            log.info("arm %s: finished in %.1f s", name, done[name][1])
    else:
        done = _in_pool(jobs, workers)
    return {k: v[0] for k, v in done.items()}, {k: round(v[1], 1) for k, v in done.items()}
