"""Small scenarios that validate the simulator's mechanisms, and the helpers that build them.

Every ``check_*`` function builds a scenario (or feeds the network functions directly), runs it and
returns what it measured as plain numbers: conservation, HTB rates/ceils/root, drops, priorities,
path choice, EF policing, bufferbloat of saturated FIFOs, the web load's mean. tests/sim/ asserts on
them against hand-derived expectations; ``python -m experiments.validate_sim`` prints them with the
queueing-theory checks for docs/simulator.md. Units: rates Mbit/s, delays ms, volumes kbit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from experiments.packet_sim import priority_fifo
from shaping.config import ClassConfig, EntityConfig, LoadConfig, PathConfig, ScenarioConfig, TenantConfig
from shaping.sim import network
from shaping.sim.simulator import Simulator, StepOutput
from shaping.spec import PlanBatch
from shaping.traffic import apps as A
from shaping.traffic.load import advance_load, capped_pareto_xm, initial_load_state

#: Load without time variation: what the closed-form expectations assume.
STEADY = LoadConfig(diurnal_amplitude=0.0, burst_prob=0.0, flash_crowd_prob=0.0, web_pareto=False)
#: A path so fast that it never queues (10 Gbit/s per 100 Mbit/s of traffic).
FAT_MBPS = 100_000.0
#: Base one-way delay of every validation path, ms.
BASE_MS = 10.0
EF, AF41, AF21, BE = 46, 34, 18, 0

Json = dict[str, Any]




# ------------------------------------------------------------------ scenario helpers
def traffic(name: str, app: str, mbps: float, flows: int = 10) -> ClassConfig:
    """One traffic class of an entity named vm0."""
    return ClassConfig(name=name, app=app, entity="vm0", mbps=mbps, flows=flows)


def tenant(name: str, classes: list[ClassConfig], cap_mbps: float = FAT_MBPS) -> TenantConfig:
    """A tenant with one VM and the given classes."""
    return TenantConfig(name=name, cap_mbps=cap_mbps, entities=[EntityConfig(name="vm0")], classes=classes)


def path(capacity_mbps: float = FAT_MBPS, buffer_ms: float = 100.0, ef_cap: float = 0.3) -> PathConfig:
    """A provider path with the validation base delay and default WFQ weights (4, 2, 1)."""
    return PathConfig(
        name=f"p{capacity_mbps:g}", capacity_mbps=capacity_mbps, base_delay_ms=BASE_MS, buffer_ms=buffer_ms,
        ef_cap=ef_cap,
    )


def scenario(
    tenants: list[TenantConfig],
    paths: list[PathConfig],
    load: LoadConfig = STEADY,
    interval_ms: float = 100.0,
    substeps: int = 10,
) -> ScenarioConfig:
    """A scenario from its parts (steady load unless told otherwise)."""
    return ScenarioConfig(
        name="validation", paths=paths, tenants=tenants, load=load, control_interval_ms=interval_ms,
        substeps=substeps,
    )


def plan_batch(sim: Simulator, b: int = 1, **fields: Any) -> PlanBatch:
    """A PlanBatch for every tenant: each field a scalar, a (K, C) nested list or a (B, K, C) array.

    Defaults: rate, ceil and root at the tenant's cap, priority 0, best-effort DSCP, no drops, path 0.
    """
    st = sim.tensors
    shape = (b, st.n_tenants, st.n_classes)
    cap = st.cap_mbps.view(1, -1, 1).expand(shape)

    def get(name: str, default: Any, dtype: torch.dtype) -> torch.Tensor:
        value = fields.pop(name, None)
        x = default if value is None else torch.as_tensor(value, dtype=dtype)
        return x.to(dtype).expand(shape).clone()

    out = PlanBatch(
        rate_mbps=get("rate", cap, torch.float32),
        ceil_mbps=get("ceil", cap, torch.float32),
        priority=get("priority", torch.tensor(0), torch.long),
        dscp=get("dscp", torch.tensor(BE), torch.long),
        drop_prob=get("drop", torch.tensor(0.0), torch.float32),
        path=get("path", torch.tensor(0), torch.long),
        root_mbps=get("root", cap, torch.float32),
    )
    if fields:
        raise TypeError(f"unknown plan fields {sorted(fields)}")
    return out


def run(sim: Simulator, plan: PlanBatch, steps: int, aqm: torch.Tensor | None = None) -> list[StepOutput]:
    """Step the simulator under a fixed plan and keep every output."""
    return [sim.step(plan, aqm) for _ in range(steps)]


def row(x: torch.Tensor) -> list[float]:
    """(1, K, C) or (K, C) values as a flat list, rounded for reading."""
    return [round(float(v), 6) for v in x.reshape(-1)]


def queueing(out: StepOutput) -> torch.Tensor:
    """Mean one-way delay minus the path's base delay: the queueing delay of each class, (K, C)."""
    return (out.metrics.delay_mean_ms - out.metrics.base_delay_ms)[0]


# ------------------------------------------------------------------ stage-level invariants
def check_stage_invariants(trials: int = 200, seed: int = 0) -> Json:
    """Random inputs to htb_stage and provider_stage: volume balance and work conservation.

    HTB serves min(root, sum_c min(demand_c, ceil_c)) in total (rates never above ceils); each
    path serves min(capacity, admitted demand on the path). Returns the largest relative errors.
    """
    g = torch.Generator().manual_seed(seed)
    b, k, c, p, dt = trials, 3, 5, 2, 10.0

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=g) * scale

    backlog, arrivals = rnd(b, k, c, scale=500.0), rnd(b, k, c, scale=800.0)
    rate = rnd(b, k, c, scale=400.0)
    ceil = rate + rnd(b, k, c, scale=800.0)
    cap = 200.0 + rnd(b, k, 1, scale=2000.0)
    pr = (rnd(b, k, c) * 3).long()
    limit = rnd(k, c, scale=600.0)
    # The stages work batch-last: class tensors (K, C, B), queue tensors (P * N_QUEUES, B).
    last = lambda x: x.permute(1, 2, 0).contiguous()  # noqa: E731
    higher, same = network.priority_masks(last(pr))
    ten = network.htb_stage(
        last(backlog), last(arrivals), last(rate), last(ceil), last(cap), higher, same, limit.unsqueeze(-1), dt
    )
    served = ten.served.permute(2, 0, 1)
    demand = backlog + arrivals
    htb_balance = (served + ten.backlog.permute(2, 0, 1) + ten.overflow.permute(2, 0, 1) - demand).abs().max()
    htb_balance = htb_balance / demand.max()
    want = torch.minimum(cap.squeeze(-1), torch.minimum(demand, ceil).sum(-1))
    htb_work = ((served.sum(-1) - want).abs() / want).max()
    htb_ceil = (served - ceil).clamp_min(0.0).max() / ceil.max()

    queue = (rnd(b, k, c) * 4).long()
    path_of = (rnd(b, k, c) * p).long()
    qi = (path_of * 4 + queue).view(b, -1)
    path_kbit = torch.tensor([1000.0, 400.0])
    ef_limit = 0.3 * path_kbit
    buffer = torch.tensor([3000.0, 500.0])
    flat = lambda x: x.reshape(b, -1).t().contiguous()  # noqa: E731  (B, K, C) -> (K * C, B)
    prov = network.provider_stage(
        flat(backlog),
        flat(arrivals),
        qi.t().contiguous(),
        path_kbit,
        ef_limit,
        buffer,
        torch.tensor([[4.0, 2.0, 1.0]] * p),
        dt,
    )
    delivered, policed = prov.delivered.t(), prov.policed.t()
    total = prov.delivered + prov.backlog + prov.policed + prov.overflow
    prov_balance = (total.t() - demand.view(b, -1)).abs().max() / demand.max()
    admitted = demand.view(b, -1) - policed
    per_path_demand = torch.zeros(b, p).scatter_add_(1, path_of.view(b, -1), admitted)
    per_path_served = torch.zeros(b, p).scatter_add_(1, path_of.view(b, -1), delivered.contiguous())
    want_p = torch.minimum(path_kbit, per_path_demand)
    prov_work = ((per_path_served - want_p).abs() / want_p.clamp_min(1.0)).max()
    return {
        "trials": trials,
        "htb_volume_balance_rel_err": float(htb_balance),
        "htb_work_conservation_rel_err": float(htb_work),
        "htb_ceil_excess_rel": float(htb_ceil),
        "provider_volume_balance_rel_err": float(prov_balance),
        "provider_work_conservation_rel_err": float(prov_work),
    }


# ------------------------------------------------------------------ end-to-end checks
def check_work_conservation() -> Json:
    """Offered above / below capacity at the tenant HTB root and at a provider path (gaming, steady)."""
    cfg = scenario(
        [
            tenant("tenant_over", [traffic("g", "gaming", 150.0)], cap_mbps=100.0),
            tenant("tenant_under", [traffic("g", "gaming", 60.0)], cap_mbps=100.0),
            tenant("path_over", [traffic("g", "gaming", 80.0)]),
            tenant("path_under", [traffic("g", "gaming", 80.0)]),
        ],
        [path(), path(50.0), path(200.0)],
    )
    sim = Simulator(cfg, seed=0)
    out = run(sim, plan_batch(sim, path=[[0], [0], [1], [2]]), 5)[-1]
    return {
        "offered_mbps": row(out.metrics.offered_mbps),
        "delivered_mbps": row(out.metrics.delivered_mbps),
        "path_utilization": row(out.path_utilization),
    }


def check_bufferbloat() -> Json:
    """Saturated FIFOs: provider queues with 50 and 200 ms buffers, tenant leaves of 1000 packets at 50 Mbit/s."""
    cfg = scenario(
        [
            tenant("fifo50", [traffic("g", "gaming", 150.0)]),
            tenant("fifo200", [traffic("g", "gaming", 150.0)]),
            tenant("leaf_gaming", [traffic("g", "gaming", 80.0)], cap_mbps=100.0),
            tenant("leaf_transactions", [traffic("t", "transactions", 80.0)], cap_mbps=100.0),
        ],
        [path(100.0, buffer_ms=50.0), path(100.0, buffer_ms=200.0), path()],
    )
    sim = Simulator(cfg, seed=0)
    plan = plan_batch(sim, path=[[0], [1], [2], [2]], rate=[[FAT_MBPS], [FAT_MBPS], [50.0], [50.0]],
                      ceil=[[FAT_MBPS], [FAT_MBPS], [50.0], [50.0]])
    out = run(sim, plan, 10)[-1]
    return {
        "queueing_delay_ms": row(queueing(out)),
        "loss": row(out.metrics.loss),
        "delivered_mbps": row(out.metrics.delivered_mbps),
    }


def check_rate_limits() -> Json:
    """HTB rates, ceils and the root (cap 100 Mbit/s, fat path).

    three: hi (prio 0, rate 10, ceil 30, offers 60), mid (prio 1, rate 20, ceil 100, offers 100),
    lo (prio 2, rate 40, ceil 100, offers 50). ceil_only: one class offering 80 with ceil 25.
    root: two classes offering 80 each with ceil 100 under a 100 Mbit/s root, and the same
    under a 60 Mbit/s plan root. unequal: two classes offering 100 at one priority with rates 10 and
    40 (how the spare 50 is split is a known deviation from Linux HTB, see docs/simulator.md).
    """
    cfg = scenario(
        [
            tenant("three", [traffic("hi", "gaming", 60.0), traffic("mid", "gaming", 100.0),
                             traffic("lo", "gaming", 50.0)], cap_mbps=100.0),
            tenant("ceil_only", [traffic("a", "gaming", 80.0)], cap_mbps=100.0),
            tenant("root", [traffic("a", "gaming", 80.0), traffic("b", "gaming", 80.0)], cap_mbps=100.0),
            tenant("root60", [traffic("a", "gaming", 80.0), traffic("b", "gaming", 80.0)], cap_mbps=100.0),
            tenant("unequal", [traffic("a", "gaming", 100.0), traffic("b", "gaming", 100.0)], cap_mbps=100.0),
        ],
        [path()],
    )
    sim = Simulator(cfg, seed=0)
    plan = plan_batch(
        sim,
        rate=[[10.0, 20.0, 40.0], [5.0, 1.0, 1.0], [10.0, 10.0, 1.0], [10.0, 10.0, 1.0], [10.0, 40.0, 1.0]],
        ceil=[[30.0, 100.0, 100.0], [25.0, 100.0, 100.0], [100.0] * 3, [100.0] * 3, [100.0] * 3],
        priority=[[0, 1, 2], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        root=[[100.0] * 3, [100.0] * 3, [100.0] * 3, [60.0] * 3, [100.0] * 3],
    )
    out = run(sim, plan, 5)[-1]
    d = out.metrics.delivered_mbps[0]
    return {
        "three_delivered_mbps": row(d[0]),
        "ceil_only_delivered_mbps": float(d[1, 0]),
        "root_delivered_mbps": row(d[2, :2]),
        "root60_delivered_mbps": row(d[3, :2]),
        "unequal_delivered_mbps": row(d[4, :2]),
    }


def check_drops() -> Json:
    """Probabilistic drops before queueing, on an uncongested path: gaming at 5%, transactions at 25%."""
    cfg = scenario([tenant("t", [traffic("g", "gaming", 20.0), traffic("x", "transactions", 20.0)])], [path()])
    sim = Simulator(cfg, seed=0)
    out = run(sim, plan_batch(sim, drop=[[0.05, 0.25]]), 3)[-1]
    return {
        "configured": [0.05, 0.25],
        "loss": row(out.metrics.loss),
        "delivered_mbps": row(out.metrics.delivered_mbps),
    }


def check_priorities() -> Json:
    """HTB priorities, DSCP queues under congestion, and Cobham's packet-scale priority wait.

    htb_prio: two classes offering 80 under a 100 Mbit/s root, rate 5 each, priority 0 and 1;
    htb_same: the same at one priority. dscp: EF 20, AF41 40, AF21 40, BE 40 (gaming) on a
    100 Mbit/s path with 100 ms buffers. cobham: web EF 20 + web BE 60 on a 100 Mbit/s path,
    compared with a packet-level non-preemptive priority queue.
    """
    cfg = scenario(
        [
            tenant("htb_prio", [traffic("a", "gaming", 80.0), traffic("b", "gaming", 80.0)], cap_mbps=100.0),
            tenant("htb_same", [traffic("a", "gaming", 80.0), traffic("b", "gaming", 80.0)], cap_mbps=100.0),
            tenant("dscp", [traffic(n, "gaming", m) for n, m in (("ef", 20.0), ("af41", 40.0), ("af21", 40.0),
                                                                  ("be", 40.0))]),
            tenant("cobham", [traffic("ef", "web", 20.0), traffic("be", "web", 60.0)]),
        ],
        [path(), path(100.0), path(100.0)],
    )
    sim = Simulator(cfg, seed=0)
    plan = plan_batch(
        sim,
        rate=[[5.0] * 4, [5.0] * 4, [FAT_MBPS] * 4, [FAT_MBPS] * 4],
        priority=[[0, 1, 0, 0], [0, 0, 0, 0], [0] * 4, [0] * 4],
        dscp=[[BE] * 4, [BE] * 4, [EF, AF41, AF21, BE], [EF, BE, BE, BE]],
        path=[[0] * 4, [0] * 4, [1] * 4, [2] * 4],
    )
    out = run(sim, plan, 15)[-1]
    m = out.metrics
    s = 8.0 / 100.0  # web service time on 100 Mbit/s, ms
    ref = priority_fifo([0.2 / s, 0.6 / s], [s, s], [1.0, 1.0], 300_000, np.random.default_rng(11))
    return {
        "htb_prio_delivered_mbps": row(m.delivered_mbps[0, 0, :2]),
        "htb_same_delivered_mbps": row(m.delivered_mbps[0, 1, :2]),
        "dscp_delivered_mbps": row(m.delivered_mbps[0, 2]),
        "dscp_queueing_delay_ms": row(queueing(out)[2]),
        "dscp_p99_ms": row(m.delay_p99_ms[0, 2]),
        "cobham_sojourn_ms": row(queueing(out)[3, :2]),
        "cobham_packet_sim_sojourn_ms": [float(r.sojourn.mean()) for r in ref],
        "service_ms": s,
    }


def check_path_choice() -> Json:
    """Moving a class to path 1 moves its bytes and its base delay (two environments, two plans).

    Class a (gaming 40) and class b (gaming 30); path 0: 200 Mbit/s, 10 ms; path 1: 100 Mbit/s,
    25 ms. Environment 0 keeps a on path 0, environment 1 moves it to path 1.
    """
    p0 = path(200.0)
    p1 = PathConfig(name="p1", capacity_mbps=100.0, base_delay_ms=25.0, buffer_ms=100.0)
    cfg = scenario([tenant("t", [traffic("a", "gaming", 40.0), traffic("b", "gaming", 30.0)])], [p0, p1])
    sim = Simulator(cfg, batch_size=2, seed=0)
    out = run(sim, plan_batch(sim, b=2, path=[[[0, 0]], [[1, 0]]]), 3)[-1]
    return {
        "path_utilization": [row(out.path_utilization[e]) for e in range(2)],
        "base_delay_ms": [row(out.metrics.base_delay_ms[e, 0]) for e in range(2)],
        "mean_delay_ms": [row(out.metrics.delay_mean_ms[e, 0]) for e in range(2)],
    }


def check_ef_policing() -> Json:
    """EF admission cap 30%: one tenant's EF 50 on path 0 next to BE 50; two tenants' EF 20 each on path 1."""
    cfg = scenario(
        [
            tenant("greedy", [traffic("ef", "gaming", 50.0), traffic("be", "gaming", 50.0)]),
            tenant("ef_a", [traffic("ef", "gaming", 20.0)]),
            tenant("ef_b", [traffic("ef", "gaming", 20.0)]),
        ],
        [path(100.0), path(100.0)],
    )
    sim = Simulator(cfg, seed=0)
    plan = plan_batch(sim, dscp=[[EF, BE], [EF, EF], [EF, EF]], path=[[0, 0], [1, 1], [1, 1]])
    out = run(sim, plan, 3)[-1]
    m = out.metrics
    return {
        "greedy_delivered_mbps": row(m.delivered_mbps[0, 0]),
        "greedy_loss": row(m.loss[0, 0]),
        "shared_ef_delivered_mbps": [float(m.delivered_mbps[0, 1, 0]), float(m.delivered_mbps[0, 2, 0])],
        "shared_ef_loss": [float(m.loss[0, 1, 0]), float(m.loss[0, 2, 0])],
    }


def check_web_load(draws_per_step: int = 20_000, steps: int = 10) -> Json:
    """Mean of the web load multiplier (capped Pareto) over draws_per_step x steps draws, and the capped
    mean the uncapped choice x_m = (alpha - 1) / alpha would give."""
    cfg = LoadConfig(diurnal_amplitude=0.0, burst_prob=0.0, flash_crowd_prob=0.0)
    gen = torch.Generator().manual_seed(0)
    app = torch.tensor([[A.WEB]])
    state = initial_load_state(draws_per_step, 1, 1, cfg, gen, torch.device("cpu"))
    total, peak = 0.0, 0.0
    for t in range(steps):
        state, mult = advance_load(state, torch.full((draws_per_step,), t), app, cfg, gen)
        total, peak = total + float(mult.mean()), max(peak, float(mult.max()))
    alpha, cap = A.WEB_PARETO_ALPHA, A.WEB_MULT_CAP
    xm_old = (alpha - 1.0) / alpha
    return {
        "draws": draws_per_step * steps,
        "mean_multiplier": total / steps,
        "max_multiplier": peak,
        "xm": capped_pareto_xm(alpha, cap),
        "uncapped_xm_capped_mean": (alpha * xm_old - xm_old**alpha * cap ** (1.0 - alpha)) / (alpha - 1.0),
    }
