"""Evaluate policies over a list of scenarios for the benchmark, in worker processes with a fixed thread count.

One job is one scenario: the worker loads it once (OmegaConf's validation takes most of a second per file),
builds the policies from their references and evaluates each of them on it with
shaping.evaluation.evaluate_policy, all with the same seeds and the same controlled tenants (like_for_like).
A policy that cannot control those tenants (a checkpoint trained for another tenant: its ``tenants`` do not
cover them, or it raises ValueError on the scenario) gets a row saying why it is not applicable.

Jobs go to ``workers`` processes (spawned: a child forked after torch started its OpenMP threads can hang)
with ``torch_threads`` intra-op threads each, the largest scenario files first; workers=1 runs them in this
process. Both are fixed settings, never read from the load, so a run's numbers do not depend on what else
the machine does (only its wall time does).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from experiments.threads import torch_threads
from shaping.config import RewardConfig, ScenarioConfig
from shaping.evaluation import PolicyResult, evaluate_policy
from shaping.policies import Policy, cannot_control, make_policy, resolve_controlled
from shaping.sim.events import event_kinds
from shaping.sim.scenarios import conf_dir, load_scenario
from shaping.spec import controlled_indices

log = logging.getLogger(__name__)

#: Called after each (scenario, policy) evaluation with the scenario's name and the policy's reference.
OnDone = Callable[[str, str], None]


@dataclass(frozen=True)
class EvalSettings:
    """How every (scenario, policy) pair is evaluated."""

    seeds: int = 4
    """Environments simulated together (the simulator's batch); the same seeds for every policy."""
    steps: int | None = None
    """Control steps; None: each scenario's episode_steps."""
    seed: int = 0
    """Base seed of the simulator."""
    device: str = "cpu"
    """Torch device of the simulator."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights of mean_reward."""
    torch_threads: int = 1
    """Intra-op threads of each worker (also the C++ kernel's)."""


def scenario_path(ref: str) -> Path:
    """The YAML file of a scenario reference: a path as it is, a name as conf/scenario/NAME.yaml."""
    path = Path(ref)
    return path if path.suffix in (".yaml", ".yml") else conf_dir() / "scenario" / f"{ref}.yaml"


def like_for_like(scenario: ScenarioConfig, policies: Sequence[Policy]) -> list[str]:
    """The tenants every row of a scenario drives, in tenant order: shaping.policies.resolve_controlled's choice
    (the scenario's `controlled`; without one, the tenants every policy can control, as in
    experiments.compare), else, where some policy cannot take part, the scenario's own controlled tenants
    (every tenant when it names none), on which that policy is then not applicable."""
    try:
        return resolve_controlled(scenario, policies)
    except ValueError:
        return [scenario.tenants[i].name for i in controlled_indices(scenario)]


def result_row(r: PolicyResult) -> dict[str, Any]:
    """The benchmark's row of one evaluation: the aggregates a suite-wide report reads, no time series."""
    return {
        "applicable": True,
        "policy": r.policy,
        "controlled": list(r.controlled),
        "sla_violation_rate": r.sla_violation_rate,
        "sla_violation_rate_std": r.sla_violation_rate_std,
        "neighbour_sla_violation_rate": r.neighbour_sla_violation_rate,
        "utilization": r.utilization,
        "utilization_std": r.utilization_std,
        "mean_reward": r.mean_reward,
        "loss": r.loss,
        "jain_throughput": r.jain_throughput,
        "apps": {
            a: {"p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "sla_violation_rate": s.sla_violation_rate}
            for a, s in r.apps.items()
        },
        "wall_s": round(r.wall_s, 3),
    }


def evaluate_scenario(
    scenario: ScenarioConfig,
    policies: Mapping[str, Policy],
    settings: EvalSettings,
    on_done: OnDone | None = None,
    controlled: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every policy on one scenario, like for like (same seeds, same controlled tenants, same neighbours).

    Args:
        controlled: the tenants every row drives; None: like_for_like's choice.
    Returns:
        The scenario's record: name, family, event kinds, steps, tenants, controlled tenants and, per
        policy reference, its row (result_row, or ``{"applicable": false, "reason": ...}``).
    """
    controlled = list(controlled) if controlled is not None else like_for_like(scenario, list(policies.values()))
    rows: dict[str, Any] = {}
    for ref, policy in policies.items():
        why = cannot_control(policy, controlled)
        if why is None:
            try:
                result = evaluate_policy(
                    scenario, policy, seeds=settings.seeds, steps=settings.steps, reward=settings.reward,
                    device=settings.device, seed=settings.seed, controlled=controlled,
                )  # fmt: skip
            except ValueError as err:  # a checkpoint whose tenant spec differs here (CheckpointMismatchError)
                why = str(err)
            else:
                rows[ref] = result_row(result)
        if why is not None:
            log.warning("%s is not applicable on %s: %s", ref, scenario.name, why)
            rows[ref] = {"applicable": False, "reason": why}
        if on_done is not None:
            on_done(scenario.name, ref)
    return {
        "name": scenario.name,
        "family": scenario.family or "hand-written",
        "events": event_kinds(scenario),
        "steps": settings.steps if settings.steps is not None else scenario.episode_steps,
        "tenants": [t.name for t in scenario.tenants],
        "controlled": controlled,
        "results": rows,
    }


def run_job(
    path: str,
    refs: Sequence[str],
    settings: EvalSettings,
    on_done: OnDone | None = None,
    controlled: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Load one scenario, build the policies and evaluate them (evaluate_scenario, driving `controlled`), timing
    the load and the job (wall and CPU seconds: on a shared machine the CPU seconds are what the job itself
    costs)."""
    with torch_threads(settings.torch_threads):
        start, cpu = time.perf_counter(), time.process_time()
        scenario = load_scenario(path)
        load_s = time.perf_counter() - start
        policies = {ref: make_policy(ref) for ref in refs}
        record = evaluate_scenario(scenario, policies, settings, on_done, controlled)
    record["file"] = path
    record["load_s"] = round(load_s, 3)
    record["job_s"] = round(time.perf_counter() - start, 3)
    record["cpu_s"] = round(time.process_time() - cpu, 3)
    return record


def _run_pool(
    files: Sequence[str], refs: Sequence[str], settings: EvalSettings, workers: int, bar: tqdm
) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    out: list[dict[str, Any] | None] = [None] * len(files)
    # The largest files first (most tenants and classes: the longest jobs), so no long job is left for the end.
    order = sorted(range(len(files)), key=lambda i: -_size(files[i]))
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_job, files[i], tuple(refs), settings): i for i in order}
        try:
            for f in as_completed(futures):
                record = f.result()
                out[futures[f]] = record
                # A worker reports when its scenario is done: every pair of it at once.
                bar.set_postfix_str(record["name"], refresh=False)
                bar.update(len(refs))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [r for r in out if r is not None]


def _size(file: str) -> int:
    path = scenario_path(file)
    return path.stat().st_size if path.is_file() else 0


def evaluate_suite(
    files: Sequence[str],
    refs: Sequence[str],
    settings: EvalSettings,
    *,
    workers: int = 2,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every policy on every scenario (run_job per scenario), with a progress bar over the
    (scenario, policy) pairs; with workers, a scenario's pairs count when the scenario is done.

    Args:
        files: scenario YAML paths (or names of conf/scenario/).
        refs: policy references (shaping.policies.make_policy), evaluated in this order on each scenario.
        settings: seeds, steps, seed, device, reward weights, threads per worker.
        workers: processes; 1: in this process.
        progress: show the progress bar (stderr).
    Returns:
        One record per scenario (evaluate_scenario's, with file, load_s, job_s and cpu_s), in the order of files.
    """
    bar = tqdm(total=len(files) * len(refs), desc="benchmark", unit="run", disable=not progress, mininterval=0.5)
    with bar:
        if workers <= 1 or len(files) <= 1:

            def tick(scenario: str, ref: str) -> None:
                bar.set_postfix_str(f"{scenario} / {ref}", refresh=False)
                bar.update(1)

            return [run_job(f, refs, settings, tick) for f in files]
        return _run_pool(files, refs, settings, min(workers, len(files)), bar)
