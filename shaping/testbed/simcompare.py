"""The simulator's prediction for the testbed's scenario against the testbed's measurement, with the gap.

The same ScenarioConfig (capacity, buffer, base delay, offered loads) and the same static plan
go to shaping.sim's Simulator and to the kernel; per class we compare delivered throughput (wire
Mbit/s), one-way delay (mean and p99) and loss. This is how we know the simulator is real.

``simulate_events`` runs a scenario with scheduled path events under a control policy in the
simulator (SimBackend, the same ControlLoop), one row per control step, for the failover check to
set beside the testbed's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from shaping.config import ScenarioConfig
from shaping.control import ControlLoop, LoopConfig, Observed, SimBackend
from shaping.control.policy import ControlPolicy
from shaping.sim.simulator import Simulator
from shaping.spec import ShapingPlan, TenantSpec, stack_plans
from shaping.spec.tenant import tenant_spec
from shaping.testbed import scenario as S
from shaping.testbed.checks import Bench, run_with_plan, tcp_wire_mbps, udp_wire_mbps
from shaping.testbed.measure import measure
from shaping.testbed.runner import RunResult

#: Metrics compared per class.
METRICS = ("throughput_mbps", "owd_mean_ms", "owd_p99_ms", "loss")


def simulate(scenario: ScenarioConfig, plan: ShapingPlan, steps: int = 150, warmup_steps: int = 30,
             seeds: int = 4, seed: int = 0) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per-class means over the seeds and the steps after warmup: throughput, mean and p99 delay, loss.

    The p99 is the mean over intervals of the simulator's per-interval p99 estimate.
    """
    n_classes = len(plan.classes)
    sim = Simulator(scenario, batch_size=seeds, seed=seed)
    batch = stack_plans([[plan] for _ in range(seeds)], n_classes)
    acc: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
    with torch.no_grad():
        for t in range(steps):
            m = sim.step(batch).metrics
            if t < warmup_steps:
                continue
            acc["throughput_mbps"].append(m.delivered_mbps[:, 0])
            acc["owd_mean_ms"].append(m.delay_mean_ms[:, 0])
            acc["owd_p99_ms"].append(m.delay_p99_ms[:, 0])
            acc["loss"].append(m.loss[:, 0])
    names = [c.name for c in scenario.tenants[0].classes]
    means = {k: torch.stack(v).mean(dim=(0, 1)) for k, v in acc.items()}
    return {name: {k: float(means[k][i]) for k in METRICS} for i, name in enumerate(names)}


def testbed_metrics(bench: Bench, run: RunResult, warmup_s: float) -> dict[str, dict[str, float | None]]:
    """The testbed's per-class numbers in the simulator's units (wire Mbit/s, one-way ms, loss fraction)."""
    flows = S.flows(bench.work)
    ms = measure(run, flows, warmup_s)
    w = bench.work
    nm = bench.tb.names
    b0 = f"{nm.router_ns}/{nm.router_out[0]}"
    # Bulk's loss: what the bottleneck dropped, over what it saw (bulk is nearly all of it).
    q_drops = run.counter_delta(b0, "tx_dropped")
    q_pkts = run.counter_delta(b0, "tx_packets") + q_drops
    gaming, txn, bulk = ms["gaming"], ms["transactions"], ms["bulk"]
    out: dict[str, dict[str, float | None]] = {
        "gaming": {
            "throughput_mbps": udp_wire_mbps(gaming.throughput_mbps or 0.0, w.gaming_bytes),
            "owd_mean_ms": _mean(run.flows["gaming"]["owd_ms"]),
            "owd_p99_ms": gaming.owd_p99_ms,
            "loss": gaming.loss,
        },
        "transactions": {
            "throughput_mbps": (txn.received or 0) * (w.txn_bytes + 66) * 8 / run.duration_s / 1e6,
            "owd_mean_ms": _half(_mean(run.flows["transactions"]["latency_ms"])),
            "owd_p99_ms": _half(txn.rtt_p99_ms),
            "loss": txn.loss,
        },
        "bulk": {
            "throughput_mbps": tcp_wire_mbps(bulk.throughput_mbps or 0.0),
            "owd_mean_ms": None,
            "owd_p99_ms": None,
            "loss": q_drops / q_pkts if q_pkts else 0.0,
        },
    }
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _half(x: float | None) -> float | None:
    """One-way from a round trip (the transactions' request and response are the same size)."""
    return None if x is None else x / 2


def gap(sim: dict[str, dict[str, float]], real: dict[str, dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per class and metric: simulator, testbed, absolute gap (sim - testbed) and relative gap."""
    out: dict[str, dict[str, Any]] = {}
    for cls, metrics in real.items():
        for k, v in metrics.items():
            s = sim[cls][k]
            row: dict[str, Any] = {"sim": s, "testbed": v, "abs_gap": None, "rel_gap": None}
            if v is not None:
                row["abs_gap"] = s - v
                row["rel_gap"] = (s - v) / abs(v) if abs(v) > 1e-9 else None
            out.setdefault(cls, {})[k] = row
    return out


def compare_scenario(bench: Bench, duration_s: float = 8.0, warmup_s: float = 2.0, sim_steps: int = 150,
                     seeds: int = 4) -> dict[str, Any]:  # fmt: skip
    """Unshaped (no qdisc on the testbed; a tenant at line rate with a FIFO plan in the simulator) and shaped."""
    scenario = S.testbed_scenario(bench.tb.cfg, bench.work)
    # No qdisc on the testbed: the queue forms in the bottleneck's FIFO. In the simulator that is a
    # tenant whose root runs at line rate (far above the bottleneck), so its HTB never queues.
    unshaped = replace(scenario, tenants=[replace(t, cap_mbps=10 * t.cap_mbps) for t in scenario.tenants])
    cases = {
        "no_shaping": (None, unshaped, S.fifo_plan(tenant_spec(unshaped, 0))),
        "shaped": (S.shaped_plan(bench.spec), scenario, S.shaped_plan(bench.spec)),
    }
    out: dict[str, Any] = {}
    steps = max(sim_steps, int(warmup_s * 1000 / scenario.control_interval_ms) + 10)
    warm = int(warmup_s * 1000 / scenario.control_interval_ms)
    for name, (kernel_plan, sim_scenario, sim_plan) in cases.items():
        run = run_with_plan(bench, kernel_plan, S.flows(bench.work), duration_s)
        real = testbed_metrics(bench, run, warmup_s)
        predicted = simulate(sim_scenario, sim_plan, steps=steps, warmup_steps=warm, seeds=seeds)
        out[name] = gap(predicted, real)
    return out


class _Recorded:
    """A backend that keeps every Observed of the inner one."""

    def __init__(self, inner: SimBackend) -> None:
        self.inner = inner
        self.observed: list[Observed] = []

    @property
    def spec(self) -> TenantSpec:
        return self.inner.spec

    def observe(self) -> Observed:
        o = self.inner.observe()
        self.observed.append(o)
        return o

    def apply(self, plan: ShapingPlan) -> None:
        self.inner.apply(plan)

    def close(self) -> None:
        self.inner.close()


def simulate_events(
    scenario: ScenarioConfig,
    make_policy: Callable[[TenantSpec], ControlPolicy],
    fallback: ShapingPlan,
    steps: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Tenant 0 of the scenario (its path events included) under the policy for ``steps`` control steps.

    Step k is the simulator's interval k (step 0: the reset's warm-up), as on the testbed. Each row: the
    scheduled paths' probe loss and delay, the path of every class in force, the delivered rate per class,
    the loop's mode.
    """
    backend = _Recorded(SimBackend(scenario, 0, seed=seed))
    loop = ControlLoop(backend, make_policy(backend.spec), fallback,
                       config=LoopConfig(interval_s=scenario.control_interval_ms / 1e3, realtime=False))  # fmt: skip
    with torch.no_grad():
        loop.run(steps=steps)
    loop.close()
    modes = [r.mode.value for r in loop.history]
    rows = []
    for k, o in enumerate(backend.observed):
        rows.append({
            "step": k,
            "class_path": [int(x) for x in o.plan.path.tolist()],
            "probe_loss": [round(float(x), 3) for x in o.paths.loss],
            "probe_delay_ms": [round(float(x), 3) for x in o.paths.delay_ms],
            "delivered_mbps": [round(float(x), 3) for x in o.metrics.delivered_mbps],
            "mode": modes[k] if k < len(modes) else None,
        })  # fmt: skip
    return rows
