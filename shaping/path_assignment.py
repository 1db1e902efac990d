"""Which provider path each traffic class takes under static rules: the routing an operator writes by hand.

A tenant's static rules know its own spec only (not its neighbours' load), so it assumes it gets the
same cap-weighted fraction of every path as of the first one (`TenantSpec.bottleneck_share_mbps`).
Latency-sensitive classes take the lowest-delay path whose share still carries them, then the other
inelastic classes likewise; bulk fills the share left spare, spread over the paths and kept off the
latency-sensitive classes' paths, so its queue never forms in front of them. A class that would exceed
a path's share goes on to the next path. With one path, or without published path capacities and
delays, every class stays on path 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shaping.spec import TenantSpec, TrafficClass
from shaping.traffic.apps import app_row

#: Interactive applications: latency-sensitive whatever their SLA says.
INTERACTIVE_APPS = frozenset({"gaming", "transactions"})
#: Applications that take whatever capacity a path leaves them (TCP transfers without a deadline).
ELASTIC_APPS = frozenset({"bulk"})
#: A latency SLA is tight when the slowest path's base delay takes more than this share of it.
TIGHT_SLA_SHARE = 0.25
#: A path suits a latency-sensitive class when its base delay is at most this share of the class's
#: delay budget, which leaves the rest of the budget to queueing.
DELAY_BUDGET_SHARE = 0.5


def path_shares(spec: TenantSpec) -> tuple[float, ...]:
    """The tenant's share of each path, Mbit/s: the fraction `bottleneck_share_mbps` is of the first path,
    applied to every path (without published capacities: the bottleneck share on path 0, 0 elsewhere)."""
    if len(spec.path_mbps) != len(spec.paths) or not spec.path_mbps:
        return (spec.bottleneck_share_mbps,) + (0.0,) * (len(spec.paths) - 1)
    fraction = spec.bottleneck_share_mbps / spec.path_mbps[0]
    return tuple(fraction * mbps for mbps in spec.path_mbps)


def delay_budget_ms(tc: TrafficClass) -> float:
    """The one-way delay a class can live with: its latency SLA, else its application's deadline."""
    return tc.qos.max_p99_ms if tc.qos.max_p99_ms is not None else app_row(tc.app)[2]


def latency_sensitive(tc: TrafficClass, spec: TenantSpec) -> bool:
    """Interactive applications, and any class whose latency SLA the slowest path's base delay eats into."""
    if tc.app in INTERACTIVE_APPS:
        return True
    slowest = max(spec.path_delay_ms, default=0.0)
    return tc.qos.max_p99_ms is not None and slowest > TIGHT_SLA_SHARE * tc.qos.max_p99_ms


@dataclass
class _Commitments:
    """The tenant's share of each path and the peak load it has put on each so far."""

    share: tuple[float, ...]
    delay: tuple[float, ...]
    used: list[float] = field(init=False)
    by_delay: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.used = [0.0] * len(self.share)
        self.by_delay = sorted(range(len(self.share)), key=lambda p: (self.delay[p], -self.share[p], p))

    def first_fit(self, candidates: list[int], load: float) -> int:
        """The first candidate whose remaining share carries the load, else the one with the most left."""
        for p in candidates:
            if self.used[p] + load <= self.share[p] * (1 + 1e-9):
                return p
        return max(candidates, key=lambda p: self.share[p] - self.used[p])

    def least_loaded(self, candidates: list[int], load: float) -> int:
        """The candidate where the load weighs least against the share (committed load + load) / share."""
        return min(candidates, key=lambda p: (self.used[p] + load) / self.share[p] if self.share[p] > 0 else math.inf)


def assign_paths(spec: TenantSpec) -> tuple[int, ...]:
    """The path of each class (in spec order), as an operator routes a tenant over several paths.

    Loads are peak offered rates (at most the cap), shares those of path_shares.
    1. Latency-sensitive classes, tightest delay budget first: the lowest-delay path whose base delay
       fits half their budget and whose remaining share carries them, else of those paths the one with
       the most share left (the lowest-delay path when no base delay fits).
    2. Other inelastic classes (web with a loose SLA, video), largest first: the lowest-delay path that
       carries them, else the one with the most share left.
    3. Bulk, largest first: the path where its load weighs least against the share, kept off the paths
       of step 1 while another path has share left, since TCP bulk fills any queue it shares (several
       bulk classes thus spread over the paths).
    """
    n = len(spec.paths)
    if n == 1 or len(spec.path_mbps) != n or len(spec.path_delay_ms) != n:
        return (0,) * len(spec.classes)
    paths = _Commitments(path_shares(spec), spec.path_delay_ms)
    load = [min(tc.mbps, spec.cap_mbps) for tc in spec.classes]
    out = [0] * len(spec.classes)

    def place(c: int, p: int) -> None:
        out[c] = p
        paths.used[p] += load[c]

    sensitive = [c for c, tc in enumerate(spec.classes) if latency_sensitive(tc, spec)]
    for c in sorted(sensitive, key=lambda c: (delay_budget_ms(spec.classes[c]), c)):
        budget = DELAY_BUDGET_SHARE * delay_budget_ms(spec.classes[c])
        within = [p for p in paths.by_delay if spec.path_delay_ms[p] <= budget] or paths.by_delay[:1]
        place(c, paths.first_fit(within, load[c]))
    sensitive_paths = {out[c] for c in sensitive}
    rest = sorted(set(range(len(spec.classes))) - set(sensitive), key=lambda c: (-load[c], c))
    for c in (c for c in rest if spec.classes[c].app not in ELASTIC_APPS):
        place(c, paths.first_fit(paths.by_delay, load[c]))
    for c in (c for c in rest if spec.classes[c].app in ELASTIC_APPS):
        p = paths.least_loaded(paths.by_delay, load[c])
        spare = [q for q in paths.by_delay if q not in sensitive_paths and paths.used[q] < paths.share[q]]
        if p in sensitive_paths and spare:
            p = paths.least_loaded(spare, load[c])
        place(c, p)
    return tuple(out)
