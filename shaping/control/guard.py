"""The guard: clamps any plan into the tenant's safety envelope and pins the classes under static rules.

The envelope is the same one that masks the agent's actions (shaping.agents.envelope): rate shares,
SLA minimum rates (times a margin), drop-probability limits and the root rate floor. The guard
applies those bounds to a *plan* rather than to action choices, so it also holds for plans that do
not come from the action grid (scripted policies, hand-edited rules, a policy the envelope was not
set on). Classes of entities under static rules (the tenant did not choose Adaptive Shaping for
them) take their shaping from the rules plan unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from shaping.agents.envelope import EnvelopeConfig
from shaping.spec import ClassShaping, ShapingPlan, SpecError, TenantSpec, burst_bytes


#: Relative tolerance of the bounds: decoded plans carry float32 levels (0.1 reads 0.10000000149).
_TOL = 1e-6


def _clip(value: float, lo: float, hi: float) -> float:
    """Value clipped to [lo, hi], left alone when it is within the tolerance of a bound."""
    if lo * (1 - _TOL) <= value <= hi * (1 + _TOL):
        return value
    return min(max(value, lo), hi)


@dataclass(frozen=True)
class GuardResult:
    """A clamped plan and what the guard changed (empty when the plan was already inside)."""

    plan: ShapingPlan
    changes: tuple[str, ...]

    @property
    def clamped(self) -> bool:
        """Whether the guard changed anything."""
        return bool(self.changes)


class Guard:
    """Safety envelope of one tenant, applied to plans.

    Args:
        spec: the tenant; its classes' QoS requirements set the SLA bounds.
        envelope: the bounds (shares of the cap), as for the agent's action mask.
        rules: the tenant's static-rules plan (also the watchdog's fallback); needed with
            ``static_entities``.
        static_entities: entities whose classes follow ``rules`` instead of the policy.
    """

    def __init__(
        self,
        spec: TenantSpec,
        envelope: EnvelopeConfig | None = None,
        rules: ShapingPlan | None = None,
        static_entities: Iterable[str] = (),
    ) -> None:
        self.spec = spec
        self.config = envelope or EnvelopeConfig()
        self.rules = rules
        if rules is not None:
            rules.validate(spec)
        names = {e.name for e in spec.entities}
        pinned = set(static_entities)
        unknown = sorted(pinned - names)
        if unknown:
            raise SpecError(f"tenant {spec.name!r}: static_entities {unknown} are not entities ({sorted(names)})")
        if pinned and rules is None:
            raise SpecError(f"tenant {spec.name!r}: static_entities need a rules plan")
        self.pinned = tuple(c.entity in pinned for c in spec.classes)

    def bounds(self, c: int) -> tuple[float, float, float]:
        """(min rate, max rate, max drop probability) of class c, in Mbit/s and probability."""
        cfg, cap, q = self.config, self.spec.cap_mbps, self.spec.classes[c].qos
        lo = cfg.min_rate_share * cap
        if q.min_mbps is not None:
            lo = max(lo, cfg.sla_rate_margin * q.min_mbps)
        hi = max(cfg.max_rate_share * cap, lo)
        max_drop = cfg.max_drop_prob
        if q.any:
            max_drop = min(max_drop, cfg.sla_max_drop_prob)
        if q.max_loss is not None:
            max_drop = min(max_drop, q.max_loss)
        # HTB needs a positive rate; an SLA above the cap is capped (the envelope relaxes it likewise).
        return min(max(lo, 1e-3), cap), min(hi, cap), max_drop

    def root_floor(self) -> float:
        """Smallest root rate: min_root_share of the cap and the sum of SLA minimum rates (times margin)."""
        cfg = self.config
        sla = sum(cfg.sla_rate_margin * (c.qos.min_mbps or 0.0) for c in self.spec.classes)
        return min(max(cfg.min_root_share * self.spec.cap_mbps, sla), self.spec.cap_mbps)

    def _clamp_class(self, c: int, cs: ClassShaping, changes: list[str]) -> ClassShaping:
        name = self.spec.classes[c].name
        if self.pinned[c]:
            assert self.rules is not None
            ruled = self.rules.classes[c]
            if ruled != cs:
                changes.append(f"{name}: static rules")
            return ruled
        cap, lo, hi, max_drop = self.spec.cap_mbps, *self.bounds(c)
        rate = _clip(cs.rate_mbps, lo, hi)
        ceil = _clip(cs.ceil_mbps, rate, cap)
        drop = min(_clip(cs.drop_prob, 0.0, max_drop), 1.0)
        prio = min(max(cs.priority, 0), self.spec.priority_levels - 1)
        dscp = cs.dscp if 0 <= cs.dscp <= 63 else 0
        path = cs.path if 0 <= cs.path < len(self.spec.paths) else 0
        for what, old, new in (
            ("rate", cs.rate_mbps, rate), ("ceil", cs.ceil_mbps, ceil), ("drop", cs.drop_prob, drop),
            ("priority", cs.priority, prio), ("dscp", cs.dscp, dscp), ("path", cs.path, path),
        ):  # fmt: skip
            if old != new:
                changes.append(f"{name}.{what}: {old:.6g} -> {new:.6g}")
        burst = cs.burst_bytes if rate == cs.rate_mbps and cs.burst_bytes > 0 else burst_bytes(rate)
        return ClassShaping(rate, ceil, burst, prio, dscp, drop, path)

    def clamp(self, plan: ShapingPlan) -> GuardResult:
        """The plan moved into the envelope; the result always passes ``plan.validate(spec)``.

        Raises:
            SpecError: the plan is for another tenant, has the wrong number of classes or carries a
                non-finite number (nan, inf).
        """
        spec = self.spec
        if plan.tenant != spec.name or len(plan.classes) != len(spec.classes):
            raise SpecError(
                f"guard of tenant {spec.name!r} ({len(spec.classes)} classes) got a plan for "
                f"{plan.tenant!r} with {len(plan.classes)} classes"
            )
        # nan would pass through _clip (it compares false with both bounds): refuse it by name instead
        # of guessing a value; the loop falls back to the static rules.
        plan.check_finite(spec)
        changes: list[str] = []
        classes = tuple(self._clamp_class(c, cs, changes) for c, cs in enumerate(plan.classes))
        root = _clip(plan.root_mbps, self.root_floor(), spec.cap_mbps)
        if root != plan.root_mbps:
            changes.append(f"root: {plan.root_mbps:.6g} -> {root:.6g}")
        out = replace(plan, classes=classes, root_mbps=root)
        out.validate(spec)
        return GuardResult(out, tuple(changes))
