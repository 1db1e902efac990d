"""Backends that log when each plan was applied: a dry run (quiet measurements, the enforcer's recorder)
and a wrapper around any backend (the kernel's, to time reconciles on a testbed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from shaping.control import Observed, build_observed
from shaping.spec import ClassMetrics, HostMetrics, ObservationLayout, ShapingPlan, TenantSpec, plan_tensors


class AppliedLog:
    """Every plan applied, with the monotonic time its apply returned (for the kernel: netlink acked it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.applied: list[tuple[float, ShapingPlan]] = []
        self.changed = threading.Condition()

    def record(self, plan: ShapingPlan) -> None:
        """Log a plan as applied now."""
        with self.changed:
            self.applied.append((self.clock(), plan))
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[ShapingPlan], bool], since: int, timeout: float) -> float | None:
        """Time of the first plan from index `since` on that satisfies `predicate`, waiting up to `timeout`."""
        deadline = self.clock() + timeout
        with self.changed:
            while True:
                for t, plan in self.applied[since:]:
                    if predicate(plan):
                        return t
                left = deadline - self.clock()
                if left <= 0:
                    return None
                self.changed.wait(left)


class TimedBackend(AppliedLog):
    """Wraps a backend (e.g. shaping.control.KernelBackend) and logs each plan once its apply returned."""

    def __init__(self, inner: Any, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.inner = inner

    @property
    def spec(self) -> TenantSpec:
        """The tenant."""
        spec: TenantSpec = self.inner.spec
        return spec

    def observe(self) -> Observed:
        """The inner backend's measurements."""
        observed: Observed = self.inner.observe()
        return observed

    def apply(self, plan: ShapingPlan) -> None:
        """Apply through the inner backend, then log."""
        self.inner.apply(plan)
        self.record(plan)

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()


class RecordingBackend(AppliedLog):
    """Observes an idle tenant and records every plan it is asked to apply, with the time it arrived.

    With `enforce=True` each plan also goes through shaping.enforce's KernelEnforcer over its
    RecordingBackend (dry run), so the plan is turned into the netlink/nftables operations the kernel
    would get; `operations` counts them.
    """

    def __init__(self, spec: TenantSpec, *, enforce: bool = True, interfaces: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._spec = spec
        self.layout = ObservationLayout(spec)
        self.operations = 0
        self.enforcer: Any = None
        if enforce:
            from shaping.control import KernelSetup, make_enforcer

            names = interfaces or tuple(f"fsr-a{i}" for i in range(len(spec.paths)))
            self.enforcer, _ = make_enforcer(spec, KernelSetup(interfaces=names), dry_run=True)
        self._t0 = clock()

    @property
    def spec(self) -> TenantSpec:
        """The tenant."""
        return self._spec

    def observe(self) -> Observed:
        """An idle interval: nothing offered, nothing lost, base delays."""
        c, v = len(self._spec.classes), len(self._spec.vms)
        zeros = torch.zeros(c)
        metrics = ClassMetrics(zeros, zeros, zeros, zeros, torch.full((c,), 10.0), torch.full((c,), 10.0),
                               torch.full((c,), 10.0), torch.ones(c))
        now = self.clock()
        plan = plan_tensors(self.applied[-1][1]) if self.applied else None
        host = HostMetrics(torch.zeros(v), torch.zeros(v))
        return build_observed(self.layout, metrics, host, now - self._t0, 0.1, plan=plan)

    def apply(self, plan: ShapingPlan) -> None:
        """Record the plan (and, with the enforcer, plan its kernel operations)."""
        if self.enforcer is not None:
            result = self.enforcer.apply(plan)
            self.operations += len(getattr(result, "ops", ()) or ())
        self.record(plan)

    def close(self) -> None:
        """Close the enforcer (nothing to tear down in a dry run)."""
        if self.enforcer is not None:
            self.enforcer.close()
