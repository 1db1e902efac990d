"""The benchmark's summary: each policy's SLA violations against the best of the yardstick, scenario by scenario.

On each scenario a policy's reference is the yardstick member (other than the policy itself) with the fewest
SLA violations of the controlled tenants (ties: the higher utilization, then the yardstick's order). The
policy's ratio there is ``(v + floor) / (best + floor)``: the floor keeps a scenario on which the reference
has no violation at all from dividing by zero, and makes differences far below it count for little (with a
floor of 0.005, 0 against 0.1% is a ratio of 0.83, 0 against 5% one of 0.09). Per group of scenarios
(all of them, those with events, those with disruptions, each kind of event), the summary holds the geometric mean of
the ratios, the worst ratio and its scenario, the scenarios won (strictly fewer violations than the
reference, beyond a tie tolerance), tied and lost, and the geometric mean of the policy's utilization over
the reference's. The same is computed against the static members only (the constant plans: the static
baselines and tuned_static). A scenario on which the policy was not applicable, or that has no reference,
does not count.

Everything here reads the plain per-scenario dicts of results.json, so a summary can be recomputed from a
results file with other settings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Kinds of scheduled change (shaping.sim.events.event_kinds) that make a scenario one "with events": the
#: network or the load changes under the policy. Tenants arriving and leaving get groups of their own.
EVENT_KINDS = ("failure", "degradation", "flash_crowd", "diurnal")
#: The abrupt ones among them, the "disruptions" group: a diurnal curve changes the load slowly, and where
#: every scenario has one (the held-out suite) "events" is the whole suite while this group is not.
DISRUPTION_KINDS = ("failure", "degradation", "flash_crowd")
#: Every group a summary can hold, in report order.
GROUPS = (
    "all", "events", "disruptions", "failure", "degradation", "flash_crowd", "diurnal", "arrival", "departure",
)  # fmt: skip
#: The groups of one kind of event each.
_KIND_GROUPS = GROUPS[3:]
#: Floor of utilization ratios, so an idle network does not divide by zero.
_UTIL_FLOOR = 1e-9

#: One policy's row on one scenario, as in results.json: at least ``applicable`` and, when applicable,
#: ``sla_violation_rate``, ``utilization`` and ``neighbour_sla_violation_rate``.
Row = Mapping[str, Any]


@dataclass
class Comparison:
    """One policy against its reference over a group of scenarios."""

    scenarios: int = 0
    """Scenarios compared (the policy applicable and some reference member present)."""
    geomean_ratio: float | None = None
    """Geometric mean over those scenarios of (v + floor) / (best + floor); below 1: fewer violations."""
    worst_ratio: float | None = None
    """The largest ratio."""
    worst_scenario: str | None = None
    """The scenario of the largest ratio."""
    won: int = 0
    """Scenarios with strictly fewer violations than the reference (by more than the tie tolerance)."""
    tied: int = 0
    """Scenarios within the tie tolerance of the reference."""
    lost: int = 0
    """Scenarios with more violations than the reference."""
    utilization_ratio: float | None = None
    """Geometric mean of the policy's utilization over the reference's."""
    neighbour_sla_violation_rate: float | None = None
    """Mean over the scenarios of the policy's neighbour SLA violation rate (a policy that wins by hurting
    the other tenants shows here)."""
    reference_neighbour_sla_violation_rate: float | None = None
    """The same for the references."""


@dataclass
class PolicySummary:
    """A policy's summary over the suite."""

    scenarios: int
    """Scenarios in the suite."""
    applicable: int
    """Scenarios the policy could run on (it controls every controlled tenant there)."""
    vs_yardstick: dict[str, Comparison] = field(default_factory=dict)
    """Per group (GROUPS, those present in the suite): against the best yardstick member."""
    vs_static: dict[str, Comparison] = field(default_factory=dict)
    """Per group: against the best static member (constant plans: static baselines, tuned_static)."""


def floored_ratio(value: float, best: float, floor: float) -> float:
    """(value + floor) / (best + floor): a violation rate relative to a reference's, defined when both are 0."""
    if floor <= 0:
        raise ValueError(f"the floor must be > 0, got {floor}")
    return (value + floor) / (best + floor)


def geometric_mean(values: Sequence[float]) -> float:
    """exp(mean(log x)) of positive values."""
    if not values or min(values) <= 0:
        raise ValueError(f"need positive values, got {list(values)}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def scenario_groups(events: Sequence[str]) -> list[str]:
    """The groups a scenario belongs to, given its event kinds: all, events (any of EVENT_KINDS), disruptions
    (any of DISRUPTION_KINDS), each kind."""
    out = ["all"]
    if any(k in EVENT_KINDS for k in events):
        out.append("events")
    if any(k in DISRUPTION_KINDS for k in events):
        out.append("disruptions")
    return out + [g for g in _KIND_GROUPS if g in events]


def best_member(rows: Mapping[str, Row], members: Sequence[str], exclude: str | None = None) -> str | None:
    """The applicable member with the fewest violations (ties: higher utilization, then members' order);
    None when no member other than `exclude` is applicable."""
    candidates = [(i, m) for i, m in enumerate(members) if m != exclude and rows.get(m, {}).get("applicable")]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (rows[c[1]]["sla_violation_rate"], -rows[c[1]]["utilization"], c[0]))[1]


@dataclass
class _Acc:
    """Per-scenario values of one comparison before they are reduced."""

    ratios: list[tuple[float, str]] = field(default_factory=list)
    util: list[float] = field(default_factory=list)
    mine_nbr: list[float] = field(default_factory=list)
    ref_nbr: list[float] = field(default_factory=list)
    outcome: list[int] = field(default_factory=list)  # -1 won, 0 tied, 1 lost

    def add(self, scenario: str, mine: Row, ref: Row, floor: float, tie: float) -> None:
        v, best = float(mine["sla_violation_rate"]), float(ref["sla_violation_rate"])
        self.ratios.append((floored_ratio(v, best, floor), scenario))
        u_mine, u_ref = max(float(mine["utilization"]), _UTIL_FLOOR), max(float(ref["utilization"]), _UTIL_FLOOR)
        self.util.append(u_mine / u_ref)
        self.mine_nbr.append(float(mine["neighbour_sla_violation_rate"]))
        self.ref_nbr.append(float(ref["neighbour_sla_violation_rate"]))
        self.outcome.append(-1 if v < best - tie else (1 if v > best + tie else 0))

    def reduce(self) -> Comparison:
        if not self.ratios:
            return Comparison()
        worst, where = max(self.ratios)
        n = len(self.ratios)
        return Comparison(
            scenarios=n,
            geomean_ratio=geometric_mean([r for r, _ in self.ratios]),
            worst_ratio=worst,
            worst_scenario=where,
            won=self.outcome.count(-1),
            tied=self.outcome.count(0),
            lost=self.outcome.count(1),
            utilization_ratio=geometric_mean(self.util),
            neighbour_sla_violation_rate=sum(self.mine_nbr) / n,
            reference_neighbour_sla_violation_rate=sum(self.ref_nbr) / n,
        )


def summarize_policy(
    policy: str,
    scenarios: Mapping[str, Mapping[str, Any]],
    yardstick: Sequence[str],
    static: Sequence[str],
    floor: float,
    tie: float = 0.0,
) -> PolicySummary:
    """One policy against the yardstick and against its static members, per group of scenarios.

    Args:
        policy: the policy's reference (a key of each scenario's ``results``).
        scenarios: scenario name -> {"events": [...], "results": {reference: Row}} (results.json's scenarios).
        yardstick: the yardstick's references; the policy itself is left out of its own reference.
        static: the static (constant-plan) members of the yardstick.
        floor: the ratio's floor (floored_ratio), > 0.
        tie: violation rates within this of the reference's count as a tie.
    """
    present = {g for sc in scenarios.values() for g in scenario_groups(sc.get("events", []))}
    groups = [g for g in GROUPS if g in present]
    acc: dict[str, dict[str, _Acc]] = {"yardstick": {g: _Acc() for g in groups}, "static": {g: _Acc() for g in groups}}
    applicable = 0
    for name, sc in scenarios.items():
        rows: Mapping[str, Row] = sc["results"]
        mine = rows.get(policy, {})
        if not mine.get("applicable"):
            continue
        applicable += 1
        for which, members in (("yardstick", yardstick), ("static", static)):
            ref = best_member(rows, members, exclude=policy)
            if ref is None:
                continue
            for g in scenario_groups(sc.get("events", [])):
                acc[which][g].add(name, mine, rows[ref], floor, tie)
    return PolicySummary(
        scenarios=len(scenarios),
        applicable=applicable,
        vs_yardstick={g: a.reduce() for g, a in acc["yardstick"].items()},
        vs_static={g: a.reduce() for g, a in acc["static"].items()},
    )


def annotate(
    scenarios: Mapping[str, dict[str, Any]], yardstick: Sequence[str], static: Sequence[str], floor: float
) -> None:
    """Write each scenario's best yardstick and best static member (``best_yardstick``, ``best_static``), and
    each applicable row's reference (best yardstick member but itself) and floored ratio to it
    (``reference``, ``ratio``; None without a reference), into the records in place."""
    for sc in scenarios.values():
        rows = sc["results"]
        sc["best_yardstick"] = best_member(rows, yardstick)
        sc["best_static"] = best_member(rows, static)
        for ref, row in rows.items():
            if not row.get("applicable"):
                continue
            best = best_member(rows, yardstick, exclude=ref)
            row["reference"] = best
            row["ratio"] = None if best is None else floored_ratio(
                row["sla_violation_rate"], rows[best]["sla_violation_rate"], floor
            )


def summarize(
    scenarios: Mapping[str, Mapping[str, Any]],
    policies: Sequence[str],
    yardstick: Sequence[str],
    static: Sequence[str],
    floor: float,
    tie: float = 0.0,
) -> dict[str, PolicySummary]:
    """summarize_policy for each policy (the evaluated policies and the yardstick's members), keyed by reference."""
    return {p: summarize_policy(p, scenarios, yardstick, static, floor, tie) for p in policies}


def heuristic_sanity(
    scenarios: Mapping[str, Mapping[str, Any]],
    adaptive: str,
    baselines: Sequence[str],
    floor: float,
    tie: float = 0.0,
    group: str = "failure",
) -> dict[str, Any]:
    """Does the adaptive member of the yardstick earn its place: against the best static baseline on each
    scenario of `group` (by default those with a path failure, where a constant plan cannot follow the
    network), its Comparison, and ``holds``: a geometric-mean ratio below 1."""
    acc = _Acc()
    for name, sc in scenarios.items():
        rows: Mapping[str, Row] = sc["results"]
        ref = best_member(rows, baselines)
        in_group = group in scenario_groups(sc.get("events", []))
        if in_group and ref is not None and rows.get(adaptive, {}).get("applicable"):
            acc.add(name, rows[adaptive], rows[ref], floor, tie)
    c = acc.reduce()
    return {
        "policy": adaptive, "against": list(baselines), "group": group, "comparison": dataclasses.asdict(c),
        "holds": c.geomean_ratio is not None and c.geomean_ratio < 1.0,
    }  # fmt: skip


def tuned_sanity(
    scenarios: Mapping[str, Mapping[str, Any]], tuned: str, baselines: Sequence[str], tie: float = 0.0
) -> dict[str, Any]:
    """Is the tuned constant plan at least as good as every static baseline on its own scenario (it was tuned
    on training seeds, the benchmark runs held-out ones): the scenarios compared, those where it is, and each
    exception with the best baseline's rate; ``holds`` when there is none."""
    exceptions: list[dict[str, Any]] = []
    compared = 0
    for name, sc in scenarios.items():
        rows: Mapping[str, Row] = sc["results"]
        ref = best_member(rows, baselines)
        if ref is None or not rows.get(tuned, {}).get("applicable"):
            continue
        compared += 1
        mine, best = float(rows[tuned]["sla_violation_rate"]), float(rows[ref]["sla_violation_rate"])
        if mine > best + tie:
            exceptions.append({"scenario": name, tuned: mine, "best_baseline": ref, "baseline_rate": best})
    return {
        "policy": tuned, "against": list(baselines), "scenarios": compared,
        "at_least_as_good": compared - len(exceptions), "exceptions": exceptions,
        "holds": compared > 0 and not exceptions,
    }  # fmt: skip
