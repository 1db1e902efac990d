"""ShapingPlan: the one desired state of a tenant's shaping, per class and batched for the simulator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from shaping.spec.tenant import SpecError, TenantSpec

#: Burst of a class's token bucket: this many milliseconds at its rate, at least this many bytes.
BURST_MS = 10.0
MIN_BURST_BYTES = 3000


@dataclass(frozen=True)
class ClassShaping:
    """Shaping of one traffic class."""

    rate_mbps: float
    """Guaranteed rate (HTB rate)."""
    ceil_mbps: float
    """Maximum rate when borrowing (HTB ceil); at least the rate."""
    burst_bytes: int
    """Token bucket depth."""
    priority: int
    """HTB priority, 0 served first."""
    dscp: int
    """DSCP mark written on the class's packets."""
    drop_prob: float
    """Probability of dropping a packet of the class before queueing."""
    path: int
    """Index of the provider path (interface) the class takes."""


@dataclass(frozen=True)
class ShapingPlan:
    """Desired shaping of every class of one tenant, in the spec's class order."""

    tenant: str
    classes: tuple[ClassShaping, ...]
    root_mbps: float
    """Aggregate rate of the tenant's HTB root (at most its cap)."""

    def check_finite(self, spec: TenantSpec) -> None:
        """Raise SpecError naming the first nan or infinite rate, ceil, drop probability or root rate.

        Done before any range check: nan compares false with every bound, so ``rate <= 0`` and
        ``ceil < rate`` alone let a nan plan through to the guard and the kernel.
        """
        if not math.isfinite(self.root_mbps):
            raise SpecError(f"tenant {spec.name!r}: root rate {self.root_mbps} is not finite")
        for i, c in enumerate(self.classes):
            name = spec.classes[i].name if i < len(spec.classes) else f"#{i}"
            for field in ("rate_mbps", "ceil_mbps", "drop_prob"):
                value = getattr(c, field)
                if not math.isfinite(value):
                    raise SpecError(f"class {name!r}: {field} {value} is not finite")

    def validate(self, spec: TenantSpec) -> None:
        """Raise SpecError when the plan does not fit the tenant's spec or carries a non-finite number."""
        self.check_finite(spec)
        if not 0 < self.root_mbps <= spec.cap_mbps * (1 + 1e-6):
            raise SpecError(f"tenant {spec.name!r}: root rate {self.root_mbps} outside (0, cap {spec.cap_mbps}]")
        if len(self.classes) != len(spec.classes):
            raise SpecError(f"plan has {len(self.classes)} classes, tenant {spec.name!r} has {len(spec.classes)}")
        for c, tc in zip(self.classes, spec.classes, strict=True):
            if not 0 <= c.dscp <= 63:
                raise SpecError(f"class {tc.name!r}: DSCP {c.dscp} outside 0..63")
            if not 0.0 <= c.drop_prob <= 1.0:
                raise SpecError(f"class {tc.name!r}: drop probability {c.drop_prob} outside [0, 1]")
            if not 0 <= c.path < len(spec.paths):
                raise SpecError(f"class {tc.name!r}: path {c.path} outside 0..{len(spec.paths) - 1}")
            if c.rate_mbps <= 0 or c.ceil_mbps < c.rate_mbps:
                raise SpecError(f"class {tc.name!r}: need 0 < rate <= ceil, got {c.rate_mbps}, {c.ceil_mbps}")
            if c.burst_bytes <= 0:
                raise SpecError(f"class {tc.name!r}: burst_bytes must be > 0, got {c.burst_bytes}")
            if c.priority < 0:
                raise SpecError(f"class {tc.name!r}: priority must be >= 0, got {c.priority}")
            if c.ceil_mbps > spec.cap_mbps * (1 + 1e-6):
                raise SpecError(f"class {tc.name!r}: ceil {c.ceil_mbps} above tenant cap {spec.cap_mbps}")


def burst_bytes(rate_mbps: float) -> int:
    """Token bucket depth for a rate: BURST_MS worth of bytes, at least MIN_BURST_BYTES."""
    return max(MIN_BURST_BYTES, int(rate_mbps * 1e6 / 8 * BURST_MS / 1e3))


class PlanBatch(NamedTuple):
    """Plans of every tenant of B environments as tensors of shape (B, K, C).

    root_mbps is a per-tenant value repeated over the classes, so every field has the same
    shape and generic code (expand, where, slicing per tenant) treats the fields alike.
    """

    rate_mbps: torch.Tensor
    ceil_mbps: torch.Tensor
    priority: torch.Tensor  # int64
    dscp: torch.Tensor  # int64
    drop_prob: torch.Tensor
    path: torch.Tensor  # int64
    root_mbps: torch.Tensor  # the tenant's root rate, repeated over its classes

    def plan(self, env: int, tenant: int, spec: TenantSpec) -> ShapingPlan:
        """The typed plan of one tenant of one environment."""
        n = len(spec.classes)
        cols = [x[env, tenant, :n].tolist() for x in self[:-1]]
        return ShapingPlan(
            tenant=spec.name,
            root_mbps=float(self.root_mbps[env, tenant, 0]),
            classes=tuple(
                ClassShaping(
                    rate_mbps=float(r),
                    ceil_mbps=float(c),
                    burst_bytes=burst_bytes(float(r)),
                    priority=int(p),
                    dscp=int(d),
                    drop_prob=float(x),
                    path=int(pa),
                )
                for r, c, p, d, x, pa in zip(*cols, strict=True)
            ),
        )


def stack_plans(plans: list[list[ShapingPlan]], n_classes: int, device: torch.device | str = "cpu") -> PlanBatch:
    """Stack typed plans, indexed [env][tenant], into a PlanBatch padded to n_classes."""
    b, k = len(plans), len(plans[0])
    out = {
        "rate_mbps": torch.ones(b, k, n_classes),
        "ceil_mbps": torch.ones(b, k, n_classes),
        "priority": torch.zeros(b, k, n_classes, dtype=torch.long),
        "dscp": torch.zeros(b, k, n_classes, dtype=torch.long),
        "drop_prob": torch.zeros(b, k, n_classes),
        "path": torch.zeros(b, k, n_classes, dtype=torch.long),
        "root_mbps": torch.ones(b, k, n_classes),
    }
    for i, row in enumerate(plans):
        for j, plan in enumerate(row):
            out["root_mbps"][i, j, :] = plan.root_mbps
            for c, cs in enumerate(plan.classes):
                out["rate_mbps"][i, j, c] = cs.rate_mbps
                out["ceil_mbps"][i, j, c] = cs.ceil_mbps
                out["priority"][i, j, c] = cs.priority
                out["dscp"][i, j, c] = cs.dscp
                out["drop_prob"][i, j, c] = cs.drop_prob
                out["path"][i, j, c] = cs.path
    return PlanBatch(**{name: t.to(device) for name, t in out.items()})


def plan_tensors(plan: ShapingPlan, device: torch.device | str = "cpu") -> PlanBatch:
    """One tenant's plan as a PlanBatch of fields (C,): what ObservationLayout.build reads as the plan in force."""
    one = stack_plans([[plan]], len(plan.classes), device)
    return PlanBatch(*(x[0, 0] for x in one))


def empty_plan(n_classes: int, device: torch.device | str = "cpu") -> PlanBatch:
    """A plan of zeros (every class on the first path), fields (C,): the plan in force before any was applied."""
    zeros = torch.zeros(n_classes, device=device)
    ints = torch.zeros(n_classes, dtype=torch.long, device=device)
    return PlanBatch(zeros, zeros, ints, ints, zeros, ints, zeros)
