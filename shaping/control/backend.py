"""The two verbs the control loop talks to: observe one interval's measurements, apply a ShapingPlan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from shaping.spec import (
    ClassMetrics,
    HostMetrics,
    ObservationLayout,
    PathMetrics,
    PlanBatch,
    ShapingPlan,
    TenantSpec,
    empty_plan,
    paths_from_classes,
)


@dataclass(frozen=True)
class Observed:
    """What a backend measured over the control interval that just ended, for one tenant.

    ``metrics`` and ``host`` have the shapes the spec defines for one tenant, (C,) and (V,), so the
    reward and SLA code of shaping.spec reads them unchanged; ``obs`` is ObservationLayout.build of
    them, the vector a policy trained in simulation expects.
    """

    metrics: ClassMetrics
    """Per-class measurements, each field of shape (C,) in the spec's class order."""
    host: HostMetrics
    """CPU and memory utilization of the tenant's VMs, each (V,)."""
    paths: PathMetrics
    """Per-path probe delay and loss and the tenant's delivered rate, each (P,)."""
    plan: PlanBatch
    """The plan in force during the interval, fields (C,) (shaping.spec.plan_tensors of the applied plan)."""
    obs: torch.Tensor
    """(obs_dim,) float32 observation (ObservationLayout(spec).build(metrics, host, paths, plan))."""
    time_s: float
    """Backend time at the end of the interval (simulated time, or the monitor's clock)."""
    interval_s: float
    """Length of the interval the measurements cover."""
    done: bool = False
    """The episode ended with this interval (simulation only; a real tenant never ends)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Backend extras (raw counters, sample counts, stale sources) for logs; never read by policies."""


def build_observed(
    layout: ObservationLayout,
    metrics: ClassMetrics,
    host: HostMetrics,
    time_s: float,
    interval_s: float,
    *,
    paths: PathMetrics | None = None,
    plan: PlanBatch | None = None,
    done: bool = False,
    info: dict[str, Any] | None = None,
) -> Observed:
    """An Observed whose observation vector is built by the spec's one ObservationLayout.

    Args:
        plan: the plan in force during the interval (fields (C,)); None: none applied yet (empty_plan).
        paths: the per-path measurements; None: derived from the classes on each path (paths_from_classes).
    """
    if plan is None:
        plan = empty_plan(len(layout.spec.classes))
    if paths is None:
        paths = paths_from_classes(layout.spec, metrics, plan)
    obs = layout.build(metrics, host, paths, plan).detach().to("cpu", torch.float32)
    return Observed(metrics, host, paths, plan, obs, float(time_s), float(interval_s), bool(done), dict(info or {}))


@runtime_checkable
class Backend(Protocol):
    """Where a tenant's traffic is: the simulator or the kernel. The loop only ever calls these."""

    @property
    def spec(self) -> TenantSpec:
        """The tenant the backend measures and shapes."""
        ...

    def observe(self) -> Observed:
        """Measurements of the interval since the previous call (the first call may cover a warm-up)."""
        ...

    def apply(self, plan: ShapingPlan) -> None:
        """Make ``plan`` the tenant's shaping from now on; raises on failure, leaving the old state."""
        ...

    def close(self) -> None:
        """Release what the backend holds (netlink sockets, simulator); shaping may stay in place."""
        ...
