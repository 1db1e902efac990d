"""KernelBackend: the real tenant behind the Backend verbs, the monitor observing and the KernelEnforcer applying."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shaping.control.backend import Observed
from shaping.spec import ShapingPlan, TenantSpec

if TYPE_CHECKING:  # shaping.monitor imports shaping.control.backend: no import cycle at run time
    from shaping.monitor.monitor import Monitor

LOG = logging.getLogger("fedshape.control.kernel")


class Enforcer(Protocol):
    """What the backend needs of shaping.enforce.KernelEnforcer."""

    def apply(self, plan: ShapingPlan) -> Any:
        """Bring the kernel to the plan (idempotent); raise when the kernel refuses."""
        ...

    def reconcile(self) -> Any:
        """Forget the model of the kernel and read it again."""
        ...

    def close(self) -> None:
        """Release sockets (the shaping stays)."""
        ...


class KernelBackend:
    """One tenant on a real host: ``observe`` samples the monitor, ``apply`` goes to the enforcer.

    Args:
        spec: the tenant.
        monitor: measures the interval since the previous observe.
        enforcer: applies plans (KernelEnforcer, or one over a RecordingBackend for dry runs).
        teardown_on_close: remove FedShape's kernel objects when closing (the enforcer's ``teardown``).
    """

    def __init__(self, spec: TenantSpec, monitor: Monitor, enforcer: Enforcer, teardown_on_close: bool = False):
        self._spec = spec
        self.monitor = monitor
        self.enforcer = enforcer
        self.teardown_on_close = teardown_on_close
        self.applied = 0
        self.last_result: Any = None
        self._resync = threading.Event()

    @property
    def spec(self) -> TenantSpec:
        """The tenant."""
        return self._spec

    def observe(self) -> Observed:
        """The monitor's measurements since the previous observe."""
        return self.monitor.sample()

    def apply(self, plan: ShapingPlan) -> None:
        """Enforce the plan; the monitor learns its paths and rates once the kernel took it."""
        if self._resync.is_set():
            self._resync.clear()
            self.enforcer.reconcile()
            LOG.warning("tenant %s: re-read the kernel before applying (someone else changed it)", self._spec.name)
        self.last_result = self.enforcer.apply(plan)
        self.monitor.set_plan(plan)
        self.applied += 1

    def request_resync(self) -> None:
        """Make the next apply re-read the kernel first: someone else changed it (the supervisor's static rules).

        Only sets a flag, so a signal handler may call it; the read happens in the loop's thread.
        """
        self._resync.set()

    def close(self) -> None:
        """Close the monitor and the enforcer (tearing the shaping down first when asked)."""
        try:
            if self.teardown_on_close:
                teardown = getattr(self.enforcer, "teardown", None)
                if teardown is not None:
                    teardown()
        finally:
            self.monitor.close()
            self.enforcer.close()


@dataclass(frozen=True)
class KernelSetup:
    """Where a tenant's agent runs: namespace and the interface of each path."""

    interfaces: tuple[str, ...]
    """Interface of each path of the spec, in path order (one interface serves a one-path spec)."""
    netns: str | None = None
    """Namespace name under /run/netns (None: the agent's own)."""
    gateways: tuple[str | None, ...] = ()
    """Next hop of each path (empty: on-link)."""


def make_enforcer(spec: TenantSpec, setup: KernelSetup, dry_run: bool = False) -> tuple[Any, Sequence[int]]:
    """A KernelEnforcer for the tenant (recording only when ``dry_run``) and the HTB class id of each class.

    shaping.enforce is imported here, not at module import, so the loop and the simulator backend
    work where pyroute2's kernel side is not usable.
    """
    from shaping.enforce import EnforceConfig, KernelEnforcer, RecordingBackend, target_from_spec

    target = target_from_spec(
        spec, EnforceConfig(interfaces=setup.interfaces, gateways=setup.gateways, netns=setup.netns)
    )
    backend = RecordingBackend(target) if dry_run else None
    enforcer = KernelEnforcer(spec, target, backend=backend, dry_run=dry_run)
    return enforcer, [target.classid(i) for i in range(len(spec.classes))]
