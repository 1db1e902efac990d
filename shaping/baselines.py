"""Static shaping baselines: what tenants do today, expressed as ShapingPlans.

Each baseline is a fixed plan per tenant plus whether the tenant's leaf queues run CoDel. Every
baseline routes its classes by the same rule (shaping.path_assignment.assign_paths: latency-sensitive
classes on the lowest-delay path that carries them, bulk on the capacity they leave spare) and keeps
its own marking, priority and rate rules:
- fifo: no shaping; one priority, best-effort marking, shared by demand (a FIFO as a fluid).
- static_priority: a hand-written rule set; interactive apps EF and first, video AF41, web AF21,
  bulk best effort and last; SLA minimum rates guaranteed.
- fair_share: every class the same guaranteed rate, borrowing allowed, no marking.
- fq_codel: per-flow fair queueing (guarantees proportional to flow counts) with CoDel on every
  leaf (target 5 ms, interval 100 ms) behind a shaper per path set to 95% of the tenant's share of
  that path, so the queue forms where fq_codel manages it: the strong default most operators pick
  (as with cake's bandwidth setting).
- greedy_premium: every class marked EF and given top priority (every tenant asking for premium).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shaping.path_assignment import assign_paths, path_shares
from shaping.spec import ClassShaping, ShapingPlan, TenantSpec, burst_bytes

EF, AF41, AF21, BE = 46, 34, 18, 0
#: Minimum guaranteed share of the cap of a class (HTB needs a positive rate).
MIN_SHARE = 0.01
#: Fraction of the tenant's share of a path an fq_codel shaper is set to (below it, so the queue is ours).
SHAPER_HEADROOM = 0.95
#: Priority and DSCP of each application in the static priority rules.
_RULES: dict[str, tuple[int, int]] = {
    "gaming": (0, EF),
    "transactions": (0, EF),
    "video": (1, AF41),
    "web": (2, AF21),
    "bulk": (3, BE),
}


@dataclass(frozen=True)
class Baseline:
    """A static baseline: a plan per tenant, and whether leaf queues run CoDel."""

    name: str
    plan: Callable[[TenantSpec], ShapingPlan]
    aqm: bool = False


def _cls(
    spec: TenantSpec, rate: float, priority: int, dscp: int, path: int, ceil: float | None = None
) -> ClassShaping:
    rate = min(max(rate, MIN_SHARE * spec.cap_mbps), spec.cap_mbps)
    ceil_v = spec.cap_mbps if ceil is None else max(min(ceil, spec.cap_mbps), rate)
    return ClassShaping(
        rate_mbps=rate,
        ceil_mbps=ceil_v,
        burst_bytes=burst_bytes(rate),
        priority=min(priority, spec.priority_levels - 1),
        dscp=dscp,
        drop_prob=0.0,
        path=path,
    )


def fifo_plan(spec: TenantSpec) -> ShapingPlan:
    """No shaping, only routing: one level, tiny guarantees, everything borrowed in proportion to demand,
    each class on the path assign_paths gives it."""
    paths = assign_paths(spec)
    return ShapingPlan(spec.name, tuple(_cls(spec, 0.0, 0, BE, p) for p in paths), spec.cap_mbps)


def static_priority_plan(spec: TenantSpec) -> ShapingPlan:
    """Hand-written rules: priority and DSCP by application, SLA minimums guaranteed (else 10% of the cap),
    interactive classes on the lowest-delay path and bulk where capacity is spare (assign_paths)."""
    out = []
    for tc, path in zip(spec.classes, assign_paths(spec), strict=True):
        prio, dscp = _RULES[tc.app]
        rate = tc.qos.min_mbps if tc.qos.min_mbps is not None else 0.1 * spec.cap_mbps
        out.append(_cls(spec, rate, prio, dscp, path))
    return ShapingPlan(spec.name, tuple(out), spec.cap_mbps)


def fair_share_plan(spec: TenantSpec) -> ShapingPlan:
    """Equal guaranteed share of the cap per class, borrowing allowed, one priority, no marking; classes
    routed by assign_paths."""
    share = spec.cap_mbps / len(spec.classes)
    paths = assign_paths(spec)
    return ShapingPlan(spec.name, tuple(_cls(spec, share, 0, BE, p) for p in paths), spec.cap_mbps)


def fq_codel_plan(spec: TenantSpec) -> ShapingPlan:
    """Per-flow fairness behind a shaper per path: each path the tenant uses (assign_paths) is shaped to 95%
    of its share of that path, and that shaper is split between the path's classes by flow count; the
    root is the sum of the shapers, one priority."""
    paths = assign_paths(spec)
    shares = path_shares(spec)
    shaper = {p: SHAPER_HEADROOM * shares[p] for p in set(paths)}
    flows = {p: sum(tc.flows for tc, q in zip(spec.classes, paths, strict=True) if q == p) for p in shaper}
    classes = tuple(
        _cls(spec, shaper[p] * tc.flows / flows[p], 0, BE, p, ceil=shaper[p])
        for tc, p in zip(spec.classes, paths, strict=True)
    )
    return ShapingPlan(spec.name, classes, min(sum(shaper.values()), spec.cap_mbps))


def greedy_premium_plan(spec: TenantSpec) -> ShapingPlan:
    """Everything EF at top priority: what a selfish tenant would ask for, on the paths assign_paths gives."""
    share = spec.cap_mbps / len(spec.classes)
    paths = assign_paths(spec)
    return ShapingPlan(spec.name, tuple(_cls(spec, share, 0, EF, p) for p in paths), spec.cap_mbps)


BASELINES: dict[str, Baseline] = {
    "fifo": Baseline("fifo", fifo_plan),
    "static_priority": Baseline("static_priority", static_priority_plan),
    "fair_share": Baseline("fair_share", fair_share_plan),
    "fq_codel": Baseline("fq_codel", fq_codel_plan, aqm=True),
    "greedy_premium": Baseline("greedy_premium", greedy_premium_plan),
}


def get_baseline(name: str) -> Baseline:
    """A baseline by name, with the known names in the error."""
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}") from None
