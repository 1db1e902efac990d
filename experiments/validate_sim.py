"""Validation of the fluid simulator: ``python -m experiments.validate_sim`` prints every measurement as JSON.

The queueing-theory checks live here (M/G/1 against Pollaczek-Khinchine and a packet-level Lindley
queue, the ceil shaper, Little's law, TCP and CoDel); the mechanism checks (conservation, limits,
priorities, paths, policing, bufferbloat) in experiments.sim_checks. tests/sim/ asserts on both against
hand-derived expectations; the JSON is what docs/simulator.md's validation tables report.
Units: rates Mbit/s, delays ms, volumes kbit.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from experiments import sim_checks as C
from experiments.packet_sim import lindley_fifo
from experiments.sim_checks import BE, EF, FAT_MBPS, Json, path, plan_batch, queueing, run, scenario, tenant, traffic
from shaping.config import LoadConfig
from shaping.sim import network
from shaping.sim.simulator import Simulator
from shaping.traffic import apps as A

#: Utilizations of the M/G/1 comparisons.
RHOS = (0.3, 0.5, 0.7, 0.9)
#: Utilizations past network.RHO_MAX, where the packet-scale wait is capped.
RHOS_SATURATING = (0.95, 0.99)


def check_littles_law(steps: int = 1000, seed: int = 7) -> Json:
    """Little's law on a provider best-effort queue whose load varies (diurnal cycle and bursts).

    An EF class (20 Mbit/s) and a best-effort class (60 Mbit/s) share a 100 Mbit/s path, one
    10 ms sub-step per control step so the backlog is sampled every sub-step. L is the mean
    best-effort backlog, lambda its throughput, W its delivered-weighted mean queueing delay as
    the simulator reports it. The true FIFO sojourn of each step's arrivals is read off the
    cumulative arrival and departure curves (the bit arriving mid-step leaves when the
    departures reach it).
    """
    interval = 10.0
    load = LoadConfig(
        diurnal_amplitude=0.25, diurnal_period_steps=250, burst_prob=0.01, burst_factor=1.3,
        burst_steps=50, flash_crowd_prob=0.0, web_pareto=False,
    )
    cfg = scenario(
        [tenant("t", [traffic("ef", "gaming", 20.0), traffic("be", "transactions", 60.0)])],
        [path(100.0, buffer_ms=2000.0)], load=load, interval_ms=interval, substeps=1,
    )
    sim = Simulator(cfg, seed=seed)
    outs = run(sim, plan_batch(sim, dscp=[[EF, BE]]), steps)
    arrived = np.array([o.metrics.offered_mbps[0, 0, 1].item() for o in outs]) * interval
    left = np.array([o.metrics.delivered_mbps[0, 0, 1].item() for o in outs]) * interval
    delay = np.array([queueing(o)[0, 1].item() for o in outs])
    backlog = np.array([o.backlog_kbit[0, 0, 1].item() for o in outs])
    lam = left.sum() / (steps * interval)
    w = float((delay * left).sum() / left.sum())
    t = np.arange(steps + 1) * interval
    departures = np.concatenate([[0.0], np.cumsum(left)])
    mid_bit = np.cumsum(arrived) - arrived / 2
    true = np.interp(mid_bit, departures, t) - (t[:-1] + interval / 2)
    done = mid_bit <= departures[-1]  # bits still queued at the end have no departure time yet
    true_mean = float((true * arrived)[done].sum() / arrived[done].sum())
    return {
        "steps": steps,
        "mean_backlog_kbit": float(backlog.mean()),
        "max_backlog_kbit": float(backlog.max()),
        "throughput_mbps": float(lam),
        "mean_delay_ms": w,
        "lambda_w_kbit": float(lam * w),
        "little_ratio": float(backlog.mean() / (lam * w)),
        "fifo_sojourn_from_curves_ms": true_mean,
        "per_step_delay_mae_ms": float(np.abs(true - delay)[done].mean()),
        "loss_kbit": float(arrived.sum() - left.sum() - backlog[-1]),
    }


def mg1_functions(rhos: Sequence[float] = RHOS, cs2s: Sequence[float] = (0.0, 1.0)) -> list[Json]:
    """The network functions' M/G/1 mean wait, one class on one link, in units of the service time."""
    dt, link, pkt = 10.0, 1000.0, 8.0  # 100 Mbit/s for 10 ms, 1000-byte packets: S = 0.08 ms
    s_ms = pkt / (link / dt)
    rows = []
    for cs2 in cs2s:
        for rho in rhos:
            served = torch.tensor(rho * link)
            w0 = network.residual_work(served, torch.tensor(pkt), torch.tensor(cs2), torch.tensor(link))
            wait = network.priority_wait_ms(w0, torch.tensor(0.0), served / link, dt)
            rows.append({"cs2": cs2, "rho": rho, "wait_over_s": float(wait) / s_ms})
    return rows


def mg1_lindley(
    rhos: Sequence[float] = RHOS, cs2s: Sequence[float] = (0.0, 0.05, 1.0), packets: int = 50_000, reps: int = 20
) -> list[Json]:
    """Packet-level Lindley FIFO: mean wait, mean and 99th percentile sojourn in service times."""
    rng = np.random.default_rng(2024)
    rows = []
    for cs2 in cs2s:
        for rho in rhos:
            q = lindley_fifo(rho, 1.0, cs2, packets, reps, rng, warmup=packets // 10)
            rows.append({
                "cs2": cs2, "rho": rho, "packets": packets * reps,
                "wait_over_s": float(q.wait.mean()),
                "sojourn_over_s": float(q.sojourn.mean()),
                "p99_sojourn_over_s": float(np.quantile(q.sojourn, 0.99)),
            })
    return rows


def check_mg1_simulator() -> list[Json]:
    """End to end: one open-loop class per tenant, each on its own 100 Mbit/s bottleneck.

    Web (1000-byte packets, cs2 = 1: M/M/1) at every utilization of RHOS and gaming (120-byte,
    cs2 = 0.05: near M/D/1) at 0.5 and 0.9 queue at a provider path (tenant root 100 Gbit/s);
    web at 0.5 and 0.9 also queues at the tenant's HTB root (cap 100 Mbit/s, fat path).
    """
    cases = [("web", "provider", r) for r in RHOS] + [("gaming", "provider", r) for r in (0.5, 0.9)]
    cases += [("web", "tenant", r) for r in (0.5, 0.9)]
    tenants, paths, route = [], [path()], []
    for app, stage, rho in cases:
        cap = 100.0 if stage == "tenant" else FAT_MBPS
        tenants.append(tenant(f"{app}_{stage}_{rho}", [traffic("c", app, rho * 100.0)], cap_mbps=cap))
        if stage == "provider":
            paths.append(path(100.0))
            route.append([len(paths) - 1])
        else:
            route.append([0])
    sim = Simulator(scenario(tenants, paths), seed=0)
    out = run(sim, plan_batch(sim, path=route), 3)[-1]
    soj, p99 = queueing(out)[:, 0], (out.metrics.delay_p99_ms - out.metrics.base_delay_ms)[0, :, 0]
    rows = []
    for i, (app, stage, rho) in enumerate(cases):
        pkt_bytes, cs2 = A.app_row(app)[:2]
        rows.append({
            "app": app, "stage": stage, "rho": rho, "cs2": cs2,
            "service_ms": pkt_bytes * 8.0 / 1000.0 / 100.0,
            "sojourn_ms": float(soj[i]), "p99_sojourn_ms": float(p99[i]),
        })
    return rows


def check_ceil_shaper() -> list[Json]:
    """Packet-scale queueing at a class's own ceil (root 100 Mbit/s, fat path, rate 5).

    Web at 90% and 50% of its ceil (45 of 50, 5 of 10 Mbit/s) and gaming at 90% of a 10 Mbit/s ceil:
    the fluid never queues (load < ceil) but HTB's ceil bucket is a server of rate ceil.
    """
    cases = [("web", 45.0, 50.0), ("web", 5.0, 10.0), ("gaming", 9.0, 10.0)]
    tenants = [tenant(f"{app}_{x:g}_{c:g}", [traffic("c", app, x)], cap_mbps=100.0) for app, x, c in cases]
    sim = Simulator(scenario(tenants, [path()]), seed=0)
    out = run(sim, plan_batch(sim, rate=5.0, ceil=[[c] for *_, c in cases]), 3)[-1]
    soj = queueing(out)[:, 0]
    rows = []
    for i, (app, load, ceil) in enumerate(cases):
        pkt_bytes, cs2 = A.app_row(app)[:2]
        rows.append({
            "app": app, "load_mbps": load, "ceil_mbps": ceil, "rho": load / ceil, "cs2": cs2,
            "service_at_ceil_ms": pkt_bytes * 8.0 / 1000.0 / ceil,
            "tx_at_root_ms": pkt_bytes * 8.0 / 1000.0 / 100.0,
            "sojourn_ms": float(soj[i]),
        })
    return rows


#: Tenants of check_tcp: (name, flows, tenant cap, path, drop probability, CoDel).
TCP_CASES: tuple[tuple[str, int, float, int, float, bool], ...] = (
    ("bloat_provider", 4, FAT_MBPS, 1, 0.0, False),
    ("bloat_leaf", 4, 100.0, 0, 0.0, False),
    ("codel_1", 1, 100.0, 0, 0.0, True),
    ("codel_4", 4, 100.0, 0, 0.0, True),
    ("codel_16", 16, 100.0, 0, 0.0, True),
    ("loss_0.01", 4, FAT_MBPS, 0, 0.01, False),
    ("loss_0.001", 4, FAT_MBPS, 0, 0.001, False),
)


def check_tcp(warmup: int = 150, steps: int = 150) -> list[Json]:
    """Bulk TCP (Misra-Gong-Towsley AIMD, demand 1 Gbit/s) in one run of the TCP_CASES tenants.

    bloat_provider: the bottleneck is a 100 Mbit/s path with a 100 ms buffer; bloat_leaf: the
    tenant's 100 Mbit/s root with a 1000-packet leaf; codel_N: the same leaf running CoDel with N
    flows; loss_p: a fat path with random drops at p. Statistics over `steps` steps after `warmup`.
    """
    tenants = [tenant(n, [traffic("bulk", "bulk", 1000.0, flows=f)], cap_mbps=cap) for n, f, cap, *_ in TCP_CASES]
    sim = Simulator(scenario(tenants, [path(), path(100.0, buffer_ms=100.0)]), seed=0)
    plan = plan_batch(sim, path=[[c[3]] for c in TCP_CASES], drop=[[c[4]] for c in TCP_CASES])
    aqm = torch.tensor([c[5] for c in TCP_CASES])
    outs = run(sim, plan, warmup + steps, aqm)[warmup:]
    soj = torch.stack([queueing(o)[:, 0] for o in outs])
    offered = torch.stack([o.metrics.offered_mbps[0, :, 0] for o in outs])
    delivered = torch.stack([o.metrics.delivered_mbps[0, :, 0] for o in outs])
    loss = torch.stack([o.metrics.loss[0, :, 0] for o in outs])
    rows = []
    for i, (name, flows, cap, p, drop, codel) in enumerate(TCP_CASES):
        rows.append({
            "name": name, "flows": flows, "drop": drop, "codel": codel,
            "bottleneck_mbps": min(cap, 100.0 if p == 1 else FAT_MBPS),
            "offered_mbps": float(offered[:, i].mean()),
            "delivered_mbps": float(delivered[:, i].mean()),
            "loss": float(loss[:, i].mean()),
            "sojourn_mean_ms": float(soj[:, i].mean()),
            "sojourn_min_ms": float(soj[:, i].min()),
            "sojourn_max_ms": float(soj[:, i].max()),
            "sojourn_p95_ms": float(soj[:, i].quantile(0.95)),
        })
    return rows


CHECKS: dict[str, Callable[[], Any]] = {
    "stage_invariants": C.check_stage_invariants,
    "work_conservation": C.check_work_conservation,
    "bufferbloat": C.check_bufferbloat,
    "littles_law": check_littles_law,
    "mg1_functions": lambda: mg1_functions((*RHOS, *RHOS_SATURATING)),
    "mg1_lindley": mg1_lindley,
    "mg1_simulator": check_mg1_simulator,
    "ceil_shaper": check_ceil_shaper,
    "rate_limits": C.check_rate_limits,
    "drops": C.check_drops,
    "priorities": C.check_priorities,
    "path_choice": C.check_path_choice,
    "ef_policing": C.check_ef_policing,
    "tcp": check_tcp,
    "web_load": C.check_web_load,
}


def main(argv: list[str] | None = None) -> None:
    """Run the checks and print what they measured (and how long each took) as JSON."""
    ap = argparse.ArgumentParser(description="Validation of the simulator against theory (docs/simulator.md).")
    ap.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run only these checks")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead, and timings stay comparable
    results: Json = {}
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        results[name] = check()
        results[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
