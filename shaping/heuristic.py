"""adaptive_heuristic: a rule-based feedback controller of a tenant's plan, batched over environments.

The controller starts from the tenant's static rules (static_priority's path-aware plan: each class's
*home*) and, every control interval, updates the plan in force from what the tenant measured (class
metrics (B, C), path probes (B, P)) with three rules:

1. **Paths.** A class leaves a down path (probe loss near 1) at once, and a path whose probes break
   its SLA or whose spare share cannot carry its minimum rate once it has missed its SLA there for
   ``leave_after`` intervals; it goes to the best other path with acceptable probes and spare capacity
   within the tenant's share (lowest delay for latency-sensitive classes, most spare share for the
   others). It goes back home after the home path has suited it for ``return_after`` intervals; a
   class that must leave again soon after going back waits twice as long the next time.
2. **Priorities and marks.** A class missing its SLA for ``escalate_after`` intervals rises one HTB
   priority level and one DSCP mark of the spec's dscp_set (EF for gaming and transactions only, and
   only within the tenant's EF budget on the path); after ``relax_after`` compliant intervals it steps
   back toward home. An EF class losing more than its SLA allows on a path that is up is being policed
   by the provider's EF admission cap: it leaves EF for ``ef_hold`` intervals.
3. **Rates (AIMD).** Where latency-sensitive classes queue (p99 minus base delay) beyond ``queue_high``
   of their delay budget, the ceilings of the bulk classes on that path are cut to ``decrease`` times
   what they delivered, so the queue forms in the tenant's own HTB where priorities apply; otherwise
   they grow by ``increase`` of the tenant's share of the path per interval, up to the cap; never
   below the SLA minimum rates.

State is explicit (HeuristicState, tensors (B, ...)); what the controller needs of a tenant (home plan,
SLA bounds, shares) is a TenantRules built once from its spec. shaping.heuristic_policy drives it from
the batched simulator, shaping.control.heuristic from the control loop; docs/control-loop.md has the
rules in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from shaping.baselines import static_priority_plan
from shaping.path_assignment import path_shares
from shaping.sim.layout import EF, dscp_queue_table
from shaping.spec import (
    ClassMetrics,
    PathMetrics,
    PlanBatch,
    QoSTensors,
    TenantSpec,
    plan_tensors,
    qos_tensors,
    sla_violations,
)
from shaping.spec.reward import MIN_RATE_SLACK

#: Applications whose sources take whatever rate they are given (TCP transfers, adaptive video).
ELASTIC_APPS = frozenset({"bulk", "video"})
#: Applications that may rise to priority 0 and an EF mark (as in the static rules).
INTERACTIVE_APPS = frozenset({"gaming", "transactions"})
#: Smallest rate of a class, share of the cap (HTB needs a positive rate; as the baselines' MIN_SHARE).
MIN_RATE_SHARE = 0.01


@dataclass(frozen=True)
class HeuristicSettings:
    """Thresholds of adaptive_heuristic; counts are control intervals."""

    down_loss: float = 0.5
    """Probe loss at which a path counts as down; its classes leave it at the next interval."""
    leave_after: int = 2
    """Intervals in a row a class misses its SLA on a path unfit for it before it leaves the path."""
    return_after: int = 30
    """Intervals in a row the home path must suit a class that left it before the class goes back."""
    max_return_after: int = 480
    """Longest wait before going back home: each return that fails within the wait doubles it."""
    delay_headroom: float = 0.8
    """A path suits a class with a latency SLA while its probe delay is at most this share of the bound."""
    default_max_loss: float = 0.02
    """Probe loss a path may show for a class whose SLA states no loss bound."""
    capacity_headroom: float = 1.1
    """A class moves only to a path whose spare share (of the tenant's) is this multiple of what it needs."""
    rescue_need: float = 0.5
    """An elastic class leaves a down path for one that does not suit it only where the spare share carries
    this share of what it needs."""
    rate_headroom: float = 1.2
    """A class with an SLA minimum rate is guaranteed this multiple of it (losses on the way eat into it)."""
    escalate_after: int = 3
    """Intervals in a row a class misses its SLA before it rises one priority level and one mark."""
    relax_after: int = 100
    """Intervals in a row a class meets its SLA before it steps back toward its home priority and mark."""
    top_priority: int = 1
    """Highest priority (lowest number) a class other than gaming and transactions rises to; only those
    interactive classes rise to priority 0 and to an EF mark."""
    ef_share: float = 0.2
    """EF load the tenant puts on a path, at most this share of its share of the path (the provider
    polices EF above its admission cap, 20-35% of a path in the scenarios)."""
    ef_hold: int = 300
    """Intervals a class stays off EF after it was policed there."""
    queue_high: float = 0.5
    """Cut the ceilings of the bulk classes of a path when a latency-sensitive class's queueing delay on it
    exceeds this share of its budget (p99 bound minus base delay)."""
    queue_low: float = 0.5
    """Grow them again while every such class queues less than this share of its budget."""
    decrease: float = 0.7
    """Multiplicative decrease: a bulk ceiling becomes this share of what the class delivered."""
    increase: float = 0.05
    """Additive increase per interval, share of the tenant's share of the path."""
    elastic_floor: float = 0.05
    """A bulk ceiling keeps at least this share of the tenant's share of its path (and its SLA minimum)."""

    def __post_init__(self) -> None:
        counts = (self.leave_after, self.return_after, self.escalate_after, self.relax_after)
        if min(counts) < 1 or self.max_return_after < self.return_after or self.ef_hold < 0:
            raise ValueError("interval counts must be >= 1 and max_return_after >= return_after")
        if not 0.0 < self.decrease < 1.0 or self.increase <= 0 or not 0.0 <= self.queue_low <= self.queue_high:
            raise ValueError("need 0 < decrease < 1, increase > 0 and 0 <= queue_low <= queue_high")


@dataclass(frozen=True)
class TenantRules:
    """What the controller needs of one tenant, as tensors (C,) or (P,) on one device."""

    spec: TenantSpec
    home: PlanBatch
    """The static rules' plan, fields (C,): where every class starts and returns to."""
    qos: QoSTensors
    """The classes' SLAs (C,)."""
    delay_bound: torch.Tensor
    """p99 bound (inf without one)."""
    loss_bound: torch.Tensor
    """Loss bound (settings.default_max_loss without one)."""
    min_rate: torch.Tensor
    """SLA minimum rate (0 without one)."""
    elastic: torch.Tensor
    """bool: bulk and video."""
    interactive: torch.Tensor
    """bool: gaming and transactions (the classes that may rise to priority 0 and EF)."""
    sensitive: torch.Tensor
    """bool: a latency SLA and not elastic (their queueing delay drives the AIMD, they pick low delay)."""
    top_priority: torch.Tensor
    """int64: highest priority a class may rise to."""
    share: torch.Tensor
    """(P,) the tenant's share of each path (shaping.path_assignment.path_shares)."""
    marks: torch.Tensor
    """(D,) the spec's dscp_set, ascending."""
    mark_is_ef: torch.Tensor
    """(D,) bool: the mark goes to the provider's EF queue."""
    ef_dscp: torch.Tensor
    """(64,) bool: the DSCP value goes to the provider's EF queue (shaping.sim.layout.dscp_queue_table)."""
    order: tuple[int, ...]
    """Classes in the order they pick paths: latency-sensitive by tightest bound, then the rest."""
    floor: torch.Tensor
    """Guaranteed rate of a class with an SLA minimum rate (rate_headroom times it), 0 for the others."""
    cut: torch.Tensor
    """bool: elastic classes without an application floor, whose ceilings the AIMD cuts."""
    app_floor: torch.Tensor
    """The SLA's application floor, 0 without one."""

    @classmethod
    def of(cls, spec: TenantSpec, settings: HeuristicSettings, device: torch.device | str = "cpu") -> TenantRules:
        """The rules of a tenant from its spec."""
        n = len(spec.classes)
        qos = QoSTensors(*(x[0] for x in qos_tensors([spec], n, device)))
        home = plan_tensors(static_priority_plan(spec), device)
        elastic = torch.tensor([c.app in ELASTIC_APPS for c in spec.classes], device=device)
        delay = qos.max_p99_ms.clone()
        loss = torch.where(torch.isinf(qos.max_loss), torch.full_like(qos.max_loss, settings.default_max_loss),
                           qos.max_loss)  # fmt: skip
        sensitive = torch.isfinite(delay) & ~elastic
        interactive = torch.tensor([c.app in INTERACTIVE_APPS for c in spec.classes], device=device)
        # Elastic classes keep their home priority: HTB priority only orders borrowing, and an elastic class
        # borrowing first starves the others; their marks still rise.
        top = torch.where(interactive, 0, min(settings.top_priority, spec.priority_levels - 1))
        top = torch.where(elastic, home.priority, top)
        # A player picks its bitrate from the throughput it sees, so a cut video class shows it as lower QoE:
        # the AIMD leaves video with a QoE floor at its home ceiling.
        cut = elastic & torch.tensor([c.qos.app_floor is None for c in spec.classes], device=device)
        marks = torch.tensor(sorted(set(spec.dscp_set)), dtype=torch.long, device=device)
        ef_dscp = dscp_queue_table().to(device) == EF
        order = sorted(range(n), key=lambda c: (not bool(sensitive[c]), float(delay[c]), c))
        return cls(
            spec=spec, home=home, qos=qos, delay_bound=delay, loss_bound=loss, min_rate=qos.min_mbps.clone(),
            elastic=elastic, interactive=interactive, sensitive=sensitive,
            top_priority=top.long(), share=torch.tensor(path_shares(spec), device=device).clamp_min(1e-6),
            marks=marks, mark_is_ef=ef_dscp[marks], ef_dscp=ef_dscp, order=tuple(order),
            floor=settings.rate_headroom * qos.min_mbps, cut=cut, app_floor=qos.app_floor.clamp_min(0.0),
        )  # fmt: skip

    @property
    def cap(self) -> float:
        """The tenant's cap, Mbit/s."""
        return self.spec.cap_mbps

    def is_ef(self, dscp: torch.Tensor) -> torch.Tensor:
        """Whether each DSCP value goes to the provider's EF queue."""
        return self.ef_dscp[dscp.clamp(0, 63)]


class HeuristicState(NamedTuple):
    """The controller's state for B environments: the plan in force and the counters of its rules."""

    priority: torch.Tensor
    """(B, C) int64 HTB priority in force."""
    dscp: torch.Tensor
    """(B, C) int64 DSCP mark in force."""
    path: torch.Tensor
    """(B, C) int64 path in force."""
    ceil: torch.Tensor
    """(B, C) ceiling in force (the AIMD's variable for elastic classes; the home ceiling for the others)."""
    bad: torch.Tensor
    """(B, C) intervals in a row the class missed its SLA on a path unfit for it."""
    healthy: torch.Tensor
    """(B, C) intervals in a row the home path suited the class while it was away."""
    wait: torch.Tensor
    """(B, C) healthy intervals the class waits for before going back home."""
    since_return: torch.Tensor
    """(B, C) intervals since the class last went back home."""
    missed: torch.Tensor
    """(B, C) intervals in a row the class missed its SLA."""
    met: torch.Tensor
    """(B, C) intervals in a row the class met its SLA."""
    ef_block: torch.Tensor
    """(B, C) intervals left during which the class may not be marked EF."""


def initial_state(rules: TenantRules, settings: HeuristicSettings, batch: int) -> HeuristicState:
    """The state of B environments at an episode's start: the home plan, every counter at rest."""
    home = rules.home
    n = home.path.shape[0]
    dev = home.path.device

    def ints(value: int = 0) -> torch.Tensor:
        return torch.full((batch, n), value, dtype=torch.long, device=dev)

    return HeuristicState(
        priority=home.priority.expand(batch, n).clone(),
        dscp=home.dscp.expand(batch, n).clone(),
        path=home.path.expand(batch, n).clone(),
        ceil=home.ceil_mbps.expand(batch, n).clone(),
        bad=ints(), healthy=ints(), wait=ints(settings.return_after),
        since_return=ints(settings.max_return_after), missed=ints(), met=ints(), ef_block=ints(),
    )  # fmt: skip


def reset_where(state: HeuristicState, fresh: HeuristicState, mask: torch.Tensor) -> HeuristicState:
    """The state with the environments where mask (B,) is True replaced by ``fresh`` (a new episode)."""
    return HeuristicState(*(torch.where(mask.view(-1, 1), f, s) for s, f in zip(state, fresh, strict=True)))


def plan(rules: TenantRules, state: HeuristicState) -> PlanBatch:
    """The plan of the state, fields (B, C): the ceilings in force, the home rates (an elastic class's at most
    its ceiling, never below its SLA minimum), root at the cap, no drops."""
    home, cap = rules.home, rules.cap
    b, n = state.path.shape
    floor = rules.floor.clamp_min(MIN_RATE_SHARE * cap).clamp(max=cap)
    rate = torch.where(rules.elastic, torch.minimum(home.rate_mbps, state.ceil), home.rate_mbps)
    rate = torch.maximum(rate, floor).expand(b, n)
    ceil = torch.maximum(state.ceil, rate)
    return PlanBatch(
        rate_mbps=rate, ceil_mbps=ceil, priority=state.priority.clone(), dscp=state.dscp.clone(),
        drop_prob=torch.zeros_like(rate), path=state.path.clone(), root_mbps=torch.full_like(rate, cap),
    )  # fmt: skip


def step(
    rules: TenantRules, settings: HeuristicSettings, state: HeuristicState, m: ClassMetrics, paths: PathMetrics
) -> HeuristicState:
    """The state after one interval's measurements of the plan in force (``plan(rules, state)``).

    Args:
        rules: the tenant.
        settings: thresholds.
        state: the state whose plan was in force during the interval.
        m: the tenant's class metrics of the interval, fields (B, C).
        paths: its path metrics of the interval, fields (B, P).
    """
    # Each rule reads the measurements against the plan they were taken under (``state``).
    viol = sla_violations(m, rules.qos)
    routed = _paths_rule(rules, settings, state, m, paths, viol)
    marked = _marks_rule(rules, settings, state, m, paths, viol)
    moved = routed.path != state.path
    # A class that changes path keeps its marks (the move answers its missed SLA), within the EF budget of
    # its new path, and its SLA counters start over.
    priority = torch.where(moved, state.priority, marked.priority)
    dscp = torch.where(moved, state.dscp, marked.dscp)
    dscp = _within_ef_budget(rules, settings, dscp, routed.path, m.offered_mbps)
    return routed._replace(
        priority=priority, dscp=dscp, ef_block=marked.ef_block, missed=torch.where(moved, 0, marked.missed),
        met=torch.where(moved, 0, marked.met), ceil=_aimd_ceil(rules, settings, state, m),
    )  # fmt: skip


def _fit(rules: TenantRules, settings: HeuristicSettings, paths: PathMetrics) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, P) whether each path's probes suit each class, and (B, P) whether each path is down."""
    down = paths.loss >= settings.down_loss
    loss_ok = paths.loss.unsqueeze(1) <= rules.loss_bound.view(1, -1, 1)
    delay_ok = paths.delay_ms.unsqueeze(1) <= settings.delay_headroom * rules.delay_bound.view(1, -1, 1)
    return loss_ok & delay_ok & ~down.unsqueeze(1), down


def _need(rules: TenantRules, settings: HeuristicSettings, m: ClassMetrics) -> torch.Tensor:
    """(B, C) spare share a class needs on a path, with capacity_headroom: bulk its SLA minimum (what it is
    owed), video its QoE floor's share of its demand (the player picks a bitrate the path carries), every
    other class its demand."""
    owed = torch.minimum(rules.min_rate, m.demand_mbps)
    need = torch.where(rules.cut, owed, m.demand_mbps * torch.where(rules.elastic, rules.app_floor, 1.0))
    return settings.capacity_headroom * need


def _paths_rule(
    rules: TenantRules, settings: HeuristicSettings, state: HeuristicState, m: ClassMetrics, paths: PathMetrics,
    viol: torch.Tensor,
) -> HeuristicState:  # fmt: skip
    """Rule 1: leave a down or unfit path for the best other path; go back home after the hysteresis."""
    fit, down = _fit(rules, settings, paths)
    path, home = state.path.clone(), rules.home.path.expand_as(state.path)
    used = paths.delivered_mbps.clone()  # (B, P) the tenant's own load on each path, updated as classes move
    share = rules.share.expand_as(used)
    need = _need(rules, settings, m)
    delivered = m.delivered_mbps
    on_down = down.gather(1, path)
    fit_here = fit.gather(2, path.unsqueeze(-1)).squeeze(-1)
    owed = torch.minimum(rules.min_rate, MIN_RATE_SLACK * m.demand_mbps)
    # A class short of its minimum rate where the tenant's share cannot carry it besides the rest.
    starved = (delivered < owed) & (used.gather(1, path) - delivered + need > share.gather(1, path))
    bad = torch.where(on_down | (viol & (~fit_here | starved)), state.bad + 1, 0)
    leave = on_down | (bad >= settings.leave_after)
    moved = torch.zeros_like(leave)
    for c in rules.order:
        go = leave[:, c]
        if not bool(go.any()):
            continue
        here = path[:, c]
        other = torch.arange(used.shape[1], device=used.device) != here.unsqueeze(-1)
        cand = fit[:, c] & (share - used >= need[:, c : c + 1]) & other
        # Off a down path, when no path suits the class: any path that is up for an inelastic class; for an
        # elastic one a path with spare share for rescue_need of what it needs (it would crowd the others out
        # of a path without it).
        rescue = on_down[:, c : c + 1] & ~cand.any(-1, keepdim=True)
        spare = share - used
        room = ((spare > 0) & (spare >= settings.rescue_need * need[:, c : c + 1])) | ~rules.elastic[c]
        cand = torch.where(rescue, ~down & other & room, cand)
        if bool(rules.sensitive[c]):
            target = torch.where(cand, paths.delay_ms, math.inf).argmin(-1)
        else:
            target = torch.where(cand, share - used, -math.inf).argmax(-1)
        move = go & cand.any(-1)
        load = torch.maximum(delivered[:, c], need[:, c]) * move
        used = used.scatter_add(1, here.unsqueeze(-1), -(delivered[:, c] * move).unsqueeze(-1))
        used = used.scatter_add(1, target.unsqueeze(-1), load.unsqueeze(-1))
        path[:, c] = torch.where(move, target, here)
        moved[:, c] = move
    # A class that must leave home soon after going back waits twice as long before the next return.
    failed_return = moved & (state.path == home) & (state.since_return < state.wait)
    wait = torch.where(failed_return, (2 * state.wait).clamp(max=settings.max_return_after), state.wait)
    settled = (path == home) & (state.since_return >= settings.max_return_after)
    wait = torch.where(settled, settings.return_after, wait)
    # Going back: for `wait` intervals the home path has had the spare share for the class and has suited it,
    # or been up and no worse than where it is (probe loss and delay).
    spare_home = (share - used).gather(1, home) >= need
    d_home, d_here = paths.delay_ms.gather(1, home), paths.delay_ms.gather(1, path)
    l_home, l_here = paths.loss.gather(1, home), paths.loss.gather(1, path)
    no_worse = ~down.gather(1, home) & (d_home <= d_here) & (l_home <= l_here)
    home_ok = (fit.gather(2, home.unsqueeze(-1)).squeeze(-1) | no_worse) & spare_home
    away = (path != home) & ~moved
    healthy = torch.where(away & home_ok, state.healthy + 1, 0)
    back = away & (healthy >= wait)
    path = torch.where(back, home, path)
    return state._replace(
        path=path,
        bad=torch.where(moved | back, 0, bad),
        healthy=torch.where(back, 0, healthy),
        wait=wait,
        since_return=torch.where(back, 0, (state.since_return + 1).clamp(max=settings.max_return_after)),
    )


def _ef_load(rules: TenantRules, dscp: torch.Tensor, path: torch.Tensor, offered: torch.Tensor) -> torch.Tensor:
    """(B, P) the tenant's load marked EF on each path."""
    ef = rules.is_ef(dscp)
    return torch.zeros(path.shape[0], rules.share.shape[0], device=path.device).scatter_add(1, path, offered * ef)


def _within_ef_budget(
    rules: TenantRules, settings: HeuristicSettings, dscp: torch.Tensor, path: torch.Tensor, offered: torch.Tensor
) -> torch.Tensor:
    """The marks with every EF class of a path where the tenant's EF load exceeds its budget (a class moved
    onto a smaller path) on the best non-EF mark instead."""
    over = _ef_load(rules, dscp, path, offered) > settings.ef_share * rules.share
    return torch.where(rules.is_ef(dscp) & over.gather(1, path), _best_plain_mark(rules), dscp)


def _mark_index(rules: TenantRules, dscp: torch.Tensor) -> torch.Tensor:
    """(B, C) index in rules.marks of the highest mark at or below each DSCP value (0 below all)."""
    return (torch.searchsorted(rules.marks, dscp.contiguous(), right=True) - 1).clamp_min(0)


def _best_plain_mark(rules: TenantRules) -> int:
    """The highest mark of the set that is not EF (the lowest mark when every one is)."""
    plain = rules.marks[~rules.mark_is_ef]
    return int(plain.max()) if plain.numel() else int(rules.marks.min())


def _marks_rule(
    rules: TenantRules, settings: HeuristicSettings, state: HeuristicState, m: ClassMetrics, paths: PathMetrics,
    viol: torch.Tensor,
) -> HeuristicState:  # fmt: skip
    """Rule 2: raise the priority and mark of a class missing its SLA, relax them after sustained compliance,
    take policed classes off EF."""
    home = rules.home
    active = m.demand_mbps > 0
    missed = torch.where(viol, state.missed + 1, 0)
    met = torch.where(viol | ~active, 0, state.met + 1)
    prio, dscp = state.priority.clone(), state.dscp.clone()
    ef_block = (state.ef_block - 1).clamp_min(0)
    # Policed: an EF class losing more than it may on a path that is up (the loss is the EF admission cap's).
    path_up = paths.loss.gather(1, state.path) < settings.down_loss
    policed = rules.is_ef(dscp) & (m.loss > rules.loss_bound) & path_up & viol
    dscp = torch.where(policed, _best_plain_mark(rules), dscp)
    ef_block = torch.where(policed, settings.ef_hold, ef_block)
    budget = settings.ef_share * rules.share

    # Marks cannot help a class whose path is down (the path rule moves it).
    up = (missed >= settings.escalate_after) & rules.qos.has_sla & active & path_up
    relax = met >= settings.relax_after
    prio = torch.where(up, torch.maximum(prio - 1, rules.top_priority), prio)
    prio = torch.where(relax & (prio < home.priority), prio + 1, torch.where(relax & (prio > home.priority), prio - 1,
                                                                               prio))  # fmt: skip
    idx = _mark_index(rules, dscp)
    top = rules.marks.shape[0] - 1
    home_idx = _mark_index(rules, home.dscp.expand_as(dscp))
    want = torch.where(up, (idx + 1).clamp(max=top), idx)
    want = torch.where(relax, torch.where(idx > home_idx, idx - 1, torch.where(idx < home_idx, idx + 1, idx)), want)
    new = rules.marks[want]
    changing = new != dscp
    # EF only for inelastic classes off the hold, within the tenant's EF budget on their path.
    to_ef = changing & rules.is_ef(new) & ~rules.is_ef(dscp)
    allowed = to_ef & rules.interactive & (ef_block == 0)
    for c in range(dscp.shape[1]):
        if not bool(allowed[:, c].any()):
            continue
        load = _ef_load(rules, dscp, state.path, m.offered_mbps).gather(1, state.path[:, c : c + 1]).squeeze(1)
        fits = load + m.offered_mbps[:, c] <= budget[state.path[:, c]]
        ok = allowed[:, c] & fits
        dscp[:, c] = torch.where(ok, new[:, c], dscp[:, c])
    dscp = torch.where(changing & ~to_ef, new, dscp)
    return state._replace(
        priority=prio, dscp=dscp, ef_block=ef_block, missed=torch.where(up, 0, missed),
        met=torch.where(relax, 0, met),
    )  # fmt: skip


def _aimd_ceil(rules: TenantRules, settings: HeuristicSettings, state: HeuristicState, m: ClassMetrics) -> torch.Tensor:
    """Rule 3, the new ceilings (B, C): cut those of the elastic classes of a path where the latency-sensitive
    classes queue, grow them where they do not."""
    p = rules.share.shape[0]
    on = torch.nn.functional.one_hot(state.path, p).to(m.delivered_mbps.dtype)  # (B, C, P)
    base = m.base_delay_ms
    budget = torch.maximum(rules.delay_bound - base, 0.1 * rules.delay_bound)
    queueing = (m.delay_p99_ms - base).clamp_min(0.0) / budget
    watched = rules.sensitive & (m.demand_mbps > 0)
    ratio = torch.where(watched, queueing, 0.0)
    pressure = (on * ratio.unsqueeze(-1)).amax(1).gather(1, state.path)  # (B, C) of the class's path
    share = rules.share[state.path]
    floor = torch.maximum(rules.floor, settings.elastic_floor * share)
    current = state.ceil
    cut = torch.maximum(settings.decrease * torch.minimum(current, m.delivered_mbps), floor)
    grown = current + settings.increase * share
    new = torch.where(pressure > settings.queue_high, cut, torch.where(pressure < settings.queue_low, grown, current))
    new = torch.minimum(new, rules.home.ceil_mbps)
    return torch.where(rules.cut, new, rules.home.ceil_mbps)
