"""A scheduled failure of the primary path under a controller that reroutes: what happened in every interval.

The tenant's classes start on path 0; at control step ``fail_step`` the router's side of path 0's link
goes down (shaping.testbed.paths), at ``recover_step`` it comes back. The ControlLoop runs on the
KernelBackend whose monitor probes both paths (PathProber, answered by the sink's echo), with a policy
that reacts to the per-path observation (``reroute_policy`` by default). The report has one row per
interval: the paths' states, the path of every class, the probes' delay and loss per path, the share of
the gaming class's updates echoed, the loop's mode; and the same scenario (same event, same policy) run
in the simulator (shaping.testbed.simcompare.simulate_events), step for step.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from shaping.config import PathEventConfig, ScenarioConfig
from shaping.control import ControlLoop, LoopConfig, Observed, ScriptedPolicy, StepRecord
from shaping.control.policy import ControlPolicy
from shaping.monitor.pathprobe import PathProbeConfig
from shaping.spec import ObservationLayout, ShapingPlan, TenantSpec
from shaping.testbed import scenario as S
from shaping.testbed.checks import Bench
from shaping.testbed.control_checks import LOOP_NICE, kernel_backend
from shaping.testbed.paths import PATH_PROBE_PORT, ScheduledPaths, path_schedule, tenant_path_prober
from shaping.testbed.runner import Flow, RunResult, run_flows
from shaping.testbed.topology import TestbedError

#: The reroute policy leaves a path whose probes lose more than this fraction in an interval.
FAIL_LOSS = 0.5
#: ... and returns once its probes lost less than this fraction for RECOVER_HOLD intervals in a row.
RECOVER_LOSS = 0.1
RECOVER_HOLD = 3
#: Share of the gaming class's updates that must be echoed in the intervals after the reroute.
GAMING_DELIVERY = 0.9


def on_path(plan: ShapingPlan, path: int) -> ShapingPlan:
    """The plan with every class on one path."""
    return replace(plan, classes=tuple(replace(c, path=path) for c in plan.classes))


def reroute_policy(
    spec: TenantSpec,
    *,
    primary: int = 0,
    backup: int = 1,
    plan: ShapingPlan | None = None,
    fail_loss: float = FAIL_LOSS,
    recover_loss: float = RECOVER_LOSS,
    hold: int = RECOVER_HOLD,
) -> ScriptedPolicy:
    """Every class on the primary path; all on the backup from the interval after the primary's probe loss
    exceeds ``fail_loss``; back once it stayed below ``recover_loss`` for ``hold`` intervals.

    Args:
        plan: the shaping of the classes (default: the testbed's scripted plan, shaped_plan).
    """
    base = plan or S.shaped_plan(spec)
    state = {"on_backup": False, "healthy": 0}

    def decide(observed: Observed) -> ShapingPlan:
        loss = float(observed.paths.loss[primary])
        if state["on_backup"]:
            state["healthy"] = state["healthy"] + 1 if loss < recover_loss else 0
            if state["healthy"] >= hold:
                state["on_backup"] = False
        elif loss > fail_loss:
            state["on_backup"], state["healthy"] = True, 0
        return on_path(base, backup if state["on_backup"] else primary)

    return ScriptedPolicy(spec, decide, name="reroute")


#: Policies the failover check can run, by name: a function of the tenant's spec.
FAILOVER_POLICIES: dict[str, Callable[[TenantSpec], ControlPolicy]] = {"reroute": reroute_policy}


def failure_events(bench: Bench, fail_step: int, recover_step: int | None) -> list[PathEventConfig]:
    """Path 0 down from fail_step up to recover_step (None: to the end)."""
    path = bench.tb.names.tenant_links[0]
    return [PathEventConfig(path=path, start_step=fail_step, end_step=recover_step, capacity_factor=0.0)]


def _run_steps(loop: ControlLoop, steps: int, timeout_s: float) -> list[StepRecord]:
    """Run exactly ``steps`` paced steps in a thread at LOOP_NICE (as root); their records."""
    records: list[StepRecord] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            if os.geteuid() == 0:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOOP_NICE)
            loop.run(steps=steps, on_step=records.append)
        except BaseException as err:  # surfaced below
            errors.append(err)

    th = threading.Thread(target=target, daemon=True, name="fst-failover-loop")
    th.start()
    th.join(timeout=timeout_s)
    if th.is_alive():
        loop.stop()
        th.join(timeout=5.0)
        raise TestbedError(f"the control loop did not run {steps} steps within {timeout_s:.0f} s")
    if errors:
        raise errors[0]
    return records


def _gaming_delivery(run: RunResult, bench: Bench, ends: Sequence[float]) -> list[float | None]:
    """Per interval (between consecutive observe times), the share of the gaming updates sent that were echoed."""
    res = run.flows.get("gaming")
    if res is None:
        return [None] * len(ends)
    start = run.start_ns / 1e9
    sent_at = sorted(start + t for t in res["send_t_s"])
    rate = bench.work.gaming_players * 60.0
    out: list[float | None] = [None]
    for a, b in itertools.pairwise(ends):
        echoed = sum(1 for t in sent_at if a <= t < b)
        out.append(min(echoed / (rate * (b - a)), 1.0) if b > a else None)
    return out


def _rows(
    spec: TenantSpec, observed: list[Observed], records: list[StepRecord], gaming: list[float | None], t0: float
) -> list[dict[str, Any]]:
    modes = {r.step: r.mode.value for r in records}
    names = ObservationLayout(spec).names
    loss_at = [names.index(f"path_loss[{p}]") for p in spec.paths]
    rows = []
    for o, g in zip(observed, gaming, strict=True):
        k = int(o.info["step"])
        rows.append({
            "step": k,
            "t_s": round(o.time_s - t0, 3),
            "path_state": o.info["path_state"],
            "class_path": [int(x) for x in o.plan.path.tolist()],
            "probe_loss": [round(float(x), 3) for x in o.paths.loss],
            "obs_path_loss": [round(float(o.obs[i]), 3) for i in loss_at],
            "probe_delay_ms": [round(float(x), 3) for x in o.paths.delay_ms],
            "path_source": o.info.get("path_source"),
            "probes": o.info.get("path_probes"),
            "delivered_mbps": [round(float(x), 3) for x in o.metrics.delivered_mbps],
            "gaming_echoed": None if g is None else round(g, 3),
            "mode": modes.get(k),
        })  # fmt: skip
    return rows


def _first(rows: list[dict[str, Any]], start: int, cond: Callable[[dict[str, Any]], bool]) -> int | None:
    return next((r["step"] for r in rows if r["step"] >= start and cond(r)), None)


def summarize(rows: list[dict[str, Any]], fail_step: int, recover_step: int | None, backup: int = 1) -> dict[str, Any]:
    """Steps at which the failure was seen, the classes moved, the path was seen back and the classes returned."""
    on_backup = lambda r: all(p == backup for p in r["class_path"])  # noqa: E731
    out: dict[str, Any] = {
        "false_detections": [r["step"] for r in rows if 1 <= r["step"] < fail_step and r["probe_loss"][0] > FAIL_LOSS],
        "detected_step": _first(rows, fail_step, lambda r: r["probe_loss"][0] > FAIL_LOSS),
        "rerouted_step": _first(rows, fail_step, on_backup),
        "loss_at_fail_step": next((r["probe_loss"][0] for r in rows if r["step"] == fail_step), None),
    }
    if recover_step is not None:
        out["recovered_step"] = _first(rows, recover_step, lambda r: r["probe_loss"][0] < RECOVER_LOSS)
        out["returned_step"] = _first(rows, recover_step, lambda r: not on_backup(r))
    return out


@dataclass
class ScheduledRun:
    """What run_scheduled measured: one row per interval (see ``_rows``), the loop's records, the path changes
    (``t_s``: seconds from the loop's start, like the rows')."""

    rows: list[dict[str, Any]]
    records: list[StepRecord]
    changes: list[dict[str, Any]]
    run: RunResult


def run_scheduled(
    bench: Bench,
    scenario: ScenarioConfig,
    make_policy: Callable[[TenantSpec], ControlPolicy],
    *,
    steps: int,
    flows: Sequence[Flow] = (),
    warmup_s: float = 1.0,
    initial: ShapingPlan | None = None,
) -> ScheduledRun:
    """Run the ControlLoop for ``steps`` intervals while the scenario's path events happen on the testbed.

    The monitor probes both paths (the sink's echo answers on PATH_PROBE_PORT); the flows run meanwhile
    (none: the probes only). The interval is the scenario's control interval; step 0 is the warm-up
    interval (``warmup_s`` of probing before the loop's first observe). The paths and the shaping are
    restored when it ends.
    """
    interval_s = scenario.control_interval_ms / 1e3
    schedule = path_schedule(scenario)
    duration = warmup_s + (steps + 3) * interval_s + 1.0  # the generators outlast the loop
    prober = tenant_path_prober(bench.tb, PathProbeConfig(one_way="reflector_clock", max_s=duration + 10.0))
    backend = kernel_backend(bench, path_probes=prober)
    fallback = S.static_rules_plan(bench.spec)
    observed: list[Observed] = []
    held: dict[str, Any] = {}

    def drive(_elapsed: float) -> None:
        prober.start()  # the sink answers from now on
        time.sleep(warmup_s)
        sched = ScheduledPaths(backend, bench.tb, schedule, on_observe=observed.append)
        loop = ControlLoop(sched, make_policy(bench.spec), fallback, config=LoopConfig(interval_s=interval_s))
        held["loop"], held["sched"], held["t0"] = loop, sched, time.monotonic()
        held["records"] = _run_steps(loop, steps, timeout_s=steps * interval_s * 4 + 30.0)

    try:
        backend.apply(initial or on_path(S.shaped_plan(bench.spec), 0))
        run = run_flows(bench.tb, list(flows), duration, during=drive, echo_ports=[PATH_PROBE_PORT])
    finally:
        if "loop" in held:
            held["loop"].close()  # restores the paths, tears the shaping down, stops the probes
        else:
            backend.close()
    ends = [o.time_s for o in observed]
    rows = _rows(bench.spec, observed, held["records"], _gaming_delivery(run, bench, ends), held["t0"])
    changes = [{**c, "t_s": round(c["time_s"] - held["t0"], 4)} for c in held["sched"].changes]
    return ScheduledRun(rows, held["records"], changes, run)


def check_failover(
    bench: Bench,
    *,
    interval_s: float = 0.2,
    steps: int = 40,
    fail_step: int = 12,
    recover_step: int | None = 25,
    policy: str = "reroute",
    flows: list[Flow] | None = None,
    warmup_s: float = 1.0,
    simulate: bool = True,
) -> dict[str, Any]:
    """Fail path 0 at fail_step (and bring it back at recover_step) under the ControlLoop; one row per interval.

    Passes when the probes see the failure in its first interval (loss > FAIL_LOSS at fail_step, never
    before), the policy's plan moves every class to path 1 for the next interval, the gaming updates
    are echoed again (>= GAMING_DELIVERY) from the interval after that until the recovery, and the
    probes see path 0 back (loss < RECOVER_LOSS) by the interval after the recovery.
    """
    if policy not in FAILOVER_POLICIES:
        raise ValueError(f"unknown failover policy {policy!r}; known: {sorted(FAILOVER_POLICIES)}")
    if not 1 <= fail_step < steps or (recover_step is not None and not fail_step < recover_step <= steps):
        raise ValueError(f"need 1 <= fail_step < recover_step <= steps, got {fail_step}, {recover_step}, {steps}")
    events = failure_events(bench, fail_step, recover_step)
    scenario = S.testbed_scenario(bench.tb.cfg, bench.work, path_events=events, control_interval_ms=interval_s * 1e3)
    make_policy = FAILOVER_POLICIES[policy]
    flows = S.flows(bench.work) if flows is None else flows
    res = run_scheduled(bench, scenario, make_policy, steps=steps, flows=flows, warmup_s=warmup_s)
    summary = summarize(res.rows, fail_step, recover_step)
    after = [r["gaming_echoed"] for r in res.rows if fail_step + 2 <= r["step"] < (recover_step or steps)]
    summary["gaming_echoed_after_reroute_min"] = min((g for g in after if g is not None), default=None)
    summary.update(_reaction_s(res, fail_step, summary["detected_step"]))
    out: dict[str, Any] = {
        "interval_s": interval_s, "steps": steps, "fail_step": fail_step, "recover_step": recover_step,
        "policy": policy, "events": [asdict(e) for e in events], "summary": summary,
        "path_changes": res.changes, "intervals": res.rows,
    }  # fmt: skip
    if simulate:
        from shaping.testbed.simcompare import simulate_events

        sim_rows = simulate_events(scenario, make_policy, S.static_rules_plan(bench.spec), steps)
        out["sim_intervals"] = sim_rows
        out["sim_summary"] = summarize(sim_rows, fail_step, recover_step)
    out["passed"] = _passed(summary, fail_step, recover_step)
    return out


def _reaction_s(res: ScheduledRun, fail_step: int, detected: int | None) -> dict[str, float | None]:
    """Seconds from the failure (the rule in the kernel) to the observation that showed it, and to the
    applied plan that moved the classes (that step's observe-to-apply time added)."""
    fail = next((c for c in res.changes if c["step"] == fail_step), None)
    row = next((r for r in res.rows if r["step"] == detected), None)
    rec = next((r for r in res.records if r.step == detected), None)
    if fail is None or row is None:
        return {"seen_after_s": None, "rerouted_after_s": None}
    done = fail["t_s"] + fail["apply_s"]
    seen = row["t_s"] - done
    return {"seen_after_s": round(seen, 4), "rerouted_after_s": None if rec is None else round(seen + rec.seconds, 4)}


def _passed(s: dict[str, Any], fail_step: int, recover_step: int | None) -> bool:
    gaming = s["gaming_echoed_after_reroute_min"]
    ok = (
        not s["false_detections"]
        and s["detected_step"] == fail_step
        and s["rerouted_step"] == fail_step + 1
        and (gaming is None or gaming >= GAMING_DELIVERY)
    )
    if recover_step is not None:
        ok = ok and s["recovered_step"] is not None and s["recovered_step"] <= recover_step + 1
    return bool(ok)
