"""The federated policy against the yardstick, tenant by tenant, after a federated run.

The question a tenant asks is not whether federating beats the rules it never used, but whether the model it
receives does better on its own network than the best it could configure: every static baseline, the constant
plan tuned for its scenario (tuned_static) and the feedback controller (adaptive_heuristic). For each tenant of
the run, the final global model (as a ``universal:`` policy), the model every arm started from, and each
yardstick member drive that tenant alone on its scenario, like for like: the benchmark's evaluation
(experiments.benchmark_eval), the same seeds for every row, neighbours on their scenario policies.

tuned_static runs only where its plan is cached (conf/tuned_static/ holds those of the embedded tenants):
tuning a scenario takes minutes, which a run's report must not spend unasked. Elsewhere its row says which
command tunes it.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.benchmark_eval import EvalSettings, run_job
from shaping.sim.scenarios import load_scenario
from shaping.tuned import TuneSettings, default_cache_dir, lookup

log = logging.getLogger(__name__)

#: The yardstick of the benchmark (experiments.config.BenchmarkConfig.yardstick), in its order.
MEMBERS = ("fifo", "static_priority", "fair_share", "fq_codel", "greedy_premium", "tuned_static", "adaptive_heuristic")
#: Row names of the two models in the results.
FEDERATED, INITIAL = "federated", "initial"


@dataclass(frozen=True)
class YardstickSettings:
    """Which members run, and how every row is evaluated."""

    members: tuple[str, ...] = MEMBERS
    """Yardstick members (policy references of shaping.policies.make_policy)."""
    eval: EvalSettings = field(default_factory=EvalSettings)
    """Seeds, steps, base seed of every row (the benchmark's defaults: 4 seeds x the scenario's steps, seed 0)."""
    workers: int = 2
    """Processes evaluating tenants side by side."""


def _tuned_missing(scenario_ref: str, tenant: str) -> str | None:
    """Why tuned_static cannot run for this tenant without tuning (no cached plan), or None."""
    scenario = load_scenario(scenario_ref)
    if lookup(default_cache_dir(), scenario, TuneSettings(), [tenant], verify=False) is not None:
        return None
    return (f"no cached tuned_static plan; tune it with `python -m experiments.tune_static scenario={scenario_ref} "
            f"controlled=[{tenant}]`")  # fmt: skip


def yardstick_comparison(
    tenants: Sequence[tuple[str, str]],
    final_weights: Path,
    initial_weights: Path | None,
    settings: YardstickSettings | None = None,
) -> dict[str, Any]:
    """The final and the initial model against every yardstick member, on each tenant's own scenario.

    Args:
        tenants: (scenario reference, tenant name) per tenant.
        final_weights: the run's final global model (a weights .npz).
        initial_weights: the model the run started from; None: the seeded random one (not evaluated here).
        settings: members, evaluation, workers.
    Returns:
        {"members": [...], "seeds": ..., "steps": ..., "seed": ..., "tenants": {"TENANT@SCENARIO": record}},
        each record the benchmark's scenario record (experiments.benchmark_eval.evaluate_scenario) with the rows
        keyed by 'federated', 'initial' and the members' names.
    """
    s = settings if settings is not None else YardstickSettings()
    models = {FEDERATED: f"universal:{final_weights}"}
    if initial_weights is not None:
        models[INITIAL] = f"universal:{initial_weights}"
    jobs = []
    for scenario_ref, tenant in tenants:
        skipped = {"tuned_static": why} if "tuned_static" in s.members and (
            why := _tuned_missing(scenario_ref, tenant)) else {}  # fmt: skip
        refs = [*models.values(), *(m for m in s.members if m not in skipped)]
        jobs.append((scenario_ref, tenant, refs, skipped))
    ctx = multiprocessing.get_context("spawn")  # a child forked after torch started its threads can hang
    with ProcessPoolExecutor(max(1, min(s.workers, len(jobs))), mp_context=ctx) as pool:
        futures = [pool.submit(run_job, ref, refs, s.eval, None, [tenant]) for ref, tenant, refs, _ in jobs]
        records = [f.result() for f in futures]
    by_ref = {v: k for k, v in models.items()}
    out: dict[str, Any] = {}
    for (_, tenant, _, skipped), record in zip(jobs, records, strict=True):
        rows = {by_ref.get(ref, ref): row for ref, row in record["results"].items()}
        rows.update({m: {"applicable": False, "reason": why} for m, why in skipped.items()})
        record["results"] = {k: rows[k] for k in [*models, *s.members] if k in rows}
        out[f"{tenant}@{record['name']}"] = record
    return {"members": list(s.members), "seeds": s.eval.seeds, "steps": s.eval.steps, "seed": s.eval.seed,
            "tenants": out}  # fmt: skip
