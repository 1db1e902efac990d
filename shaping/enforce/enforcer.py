"""KernelEnforcer: the facade the control loop uses to apply plans, reconcile after restarts and tear down."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from shaping.enforce.backends import Backend, NetlinkBackend, RecordingBackend
from shaping.enforce.capabilities import Capabilities, probe_capabilities
from shaping.enforce.fastpath import HtbFastPath
from shaping.enforce.kinds import KINDS, HtbClass
from shaping.enforce.kinds.htb import desired_classes
from shaping.enforce.kinds.nft import KIND as NFT
from shaping.enforce.kinds.nft import NftRule
from shaping.enforce.kinds.routing import PolicyRule
from shaping.enforce.ops import KernelState, Operation
from shaping.enforce.overlaps import check_disjoint_classes
from shaping.enforce.planner import plan_operations, teardown_operations
from shaping.enforce.target import EnforceTarget
from shaping.spec.plan import ShapingPlan
from shaping.spec.tenant import TenantSpec

log = logging.getLogger(__name__)


def _marks(plan: ShapingPlan) -> tuple[tuple[int, float, int], ...]:
    """What nftables and policy routing enforce of a plan: per class DSCP, drop probability and path."""
    return tuple((c.dscp, c.drop_prob, c.path) for c in plan.classes)


@dataclass(frozen=True)
class ApplyResult:
    """What one apply did."""

    ops: tuple[Operation, ...]
    elapsed_s: float
    fast: bool
    """True when the HTB changes went through the batched fast path."""


class KernelEnforcer:
    """Applies ShapingPlans to the kernel (or records them), idempotently and incrementally.

    The first apply reads FedShape's objects back from the kernel, so a new enforcer over an
    existing state (a restarted agent) changes only what differs. Afterwards the enforcer keeps a
    model of the state it wrote and plans against it; ``reconcile()`` re-reads the kernel.

    Args:
        spec: the tenant.
        target: what may be touched (built by ``target_from_spec``).
        backend: None: NetlinkBackend(target), or RecordingBackend when ``dry_run`` or the probe
            finds no CAP_NET_ADMIN.
        capabilities: None: probe the target's namespace; decides which kinds are planned.
        dry_run: record operations instead of applying them.
        fast_path: batch pure HTB rate changes on a raw netlink socket (netlink backend only).
        clock: time source for ``ApplyResult.elapsed_s``.
    Raises:
        SpecError: two classes of the spec could match the same packet.
    """

    def __init__(
        self,
        spec: TenantSpec,
        target: EnforceTarget,
        backend: Backend | None = None,
        capabilities: Capabilities | None = None,
        dry_run: bool = False,
        fast_path: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        # Refused here whatever kinds the host supports: an overlap is a configuration error, not a kernel one.
        check_disjoint_classes(spec)
        self.spec = spec
        self.target = target
        if capabilities is None and backend is None and not dry_run:
            capabilities = probe_capabilities(target.netns)
            if not capabilities.complete:
                log.warning("tenant %s: %s", spec.name, capabilities.summary())
        self.capabilities = capabilities
        self.kinds: Sequence[str] | None = None
        if capabilities is not None and capabilities.cap_net_admin:
            self.kinds = capabilities.kinds
        if backend is None:
            usable = capabilities is None or capabilities.cap_net_admin
            backend = NetlinkBackend(target, kinds=self.kinds) if usable and not dry_run else RecordingBackend(target)
        self.backend = backend
        self._fast = HtbFastPath(target.netns) if fast_path and isinstance(backend, NetlinkBackend) else None
        self._state: KernelState | None = None
        self._applied_marks: tuple[tuple[int, float, int], ...] | None = None
        self._applied_plan: ShapingPlan | None = None
        self._ifindex: dict[str, int] = {}
        self.clock = clock

    @property
    def state(self) -> KernelState:
        """The enforcer's model of FedShape's kernel objects (read from the kernel on first use)."""
        if self._state is None:
            self._state = self.backend.read_state()
        return self._state

    def reconcile(self) -> KernelState:
        """Forget the model and read the kernel again (after someone else changed it)."""
        self._state, self._applied_marks, self._applied_plan = None, None, None
        self._ifindex.clear()  # an interface may have been re-created with a new index
        return self.state

    def plan(self, plan: ShapingPlan) -> list[Operation]:
        """The operations ``apply(plan)`` would run now (pure, nothing is changed)."""
        kinds = self.kinds
        if self._state is not None and _marks(plan) == self._applied_marks:
            # DSCP, drops and paths are what they were at the last apply on this model: only HTB can differ.
            kinds = [k for k in (kinds if kinds is not None else KINDS) if k == "htb"]
        return plan_operations(self.spec, plan, self.target, self.state, kinds)

    def apply(self, plan: ShapingPlan) -> ApplyResult:
        """Bring the kernel to ``plan``: no operation when it is already there, only the differences otherwise.

        A plan equal to the last one applied on the current model returns at once, without planning
        (a deployed greedy policy repeats its plan most intervals); ``reconcile()``, a failed apply,
        or a new enforcer make the next apply plan again (nft echoes the handles of the rules it adds, so
        an nft change needs no read-back).

        Raises:
            SpecError: the plan does not fit the tenant.
            PermissionError: an operation names an interface outside the target (never expected).
            NetlinkError, NftError, FastPathError: the kernel refused a change; the model is dropped
                and the next apply re-reads the kernel.
        """
        start = self.clock()
        if self._applied_plan is not None and self._state is not None and (
            plan is self._applied_plan or plan == self._applied_plan
        ):
            return ApplyResult((), self.clock() - start, False)
        ops = self.plan(plan)
        fast = False
        try:
            rest: Sequence[Operation] = ops
            htb, fast_path = self._fast_changes(ops), self._fast
            rules = self._fast_rules(ops)
            if htb and fast_path is not None:
                # HTB comes first in KINDS: sending its changes ahead of the rest keeps the planned order.
                fast_path.change([(self._index(o.interface), o) for o in htb])
                rest, fast = ops[len(htb) :], True
            rest = rest[: len(rest) - len(rules)]
            if rest:
                self.backend.apply(rest)
            if rules and fast_path is not None:
                fast_path.change_rules(rules)  # last in the planned order too: after nft and the routes
        except BaseException:
            self._state, self._applied_marks, self._applied_plan = None, None, None
            self._ifindex.clear()
            raise
        if not self._record(ops):
            self._state = None  # nft assigns rule handles: read them back on next use
        self._applied_marks = _marks(plan) if self._state is not None else None
        self._applied_plan = plan if self._state is not None else None
        return ApplyResult(tuple(ops), self.clock() - start, fast)

    def _record(self, ops: Sequence[Operation]) -> bool:
        """Fold applied operations into the model; False when it cannot (nft added rules without echoing handles).

        With the handles nft echoed, an nft change costs no read-back: listing the table again (a second
        nft process) and the netlink dumps doubled the time of every step of an exploring agent.
        """
        new_rules = [o for o in ops if isinstance(o, NftRule) and o.verb in ("add", "insert", "replace")]
        handles = list(getattr(self.backend, "nft_rule_handles", ()))
        if any(o.kind == "nft" for o in ops) and len(handles) != len(new_rules):
            return False
        given = iter(handles)
        for op in ops:
            if isinstance(op, NftRule) and op.verb in ("add", "insert", "replace"):
                NFT.record(self.state, op, handle=next(given))
            else:
                KINDS[op.kind].record(self.state, op)
        return True

    def write_rates(self, plan: ShapingPlan) -> bool:
        """Write the plan's HTB classes without reading the kernel first (one fast-path batch); False: not possible.

        For putting a known plan back in a hurry (the supervisor, when the agent hangs): rates and ceilings
        are what limit the tenant, and this needs no netlink dump. It changes classes that exist and
        forgets the model; ``apply`` (after ``reconcile``) must follow for marks, drops and paths.

        Raises:
            FastPathError: the kernel refused a change (a class is missing: ``apply`` creates it).
        """
        if self._fast is None:
            return False
        ops = [replace(o, verb="change") for o in desired_classes(self.spec, plan, self.target)]
        if not all(self._fast.supports(o) for o in ops):
            return False
        self._state, self._applied_marks, self._applied_plan = None, None, None
        self._fast.change([(self._index(o.interface), o) for o in ops])
        return True

    def _fast_changes(self, ops: Sequence[Operation]) -> list[HtbClass]:
        """The leading HTB class changes when the fast path can send all of the apply's HTB operations, else none.

        A plan that also moves marks, drops or paths (an exploring policy, the supervisor restoring
        the static rules) sends its rate changes in one batch too, not one pyroute2 request each.
        """
        if self._fast is None:
            return []
        htb = [o for o in ops if isinstance(o, HtbClass)]
        if htb and list(ops[: len(htb)]) == htb and all(self._fast.supports(o) for o in htb):
            return htb
        return []

    def _fast_rules(self, ops: Sequence[Operation]) -> list[PolicyRule]:
        """The trailing policy rule changes (paths moving), sent in one batch instead of one request each."""
        if self._fast is None:
            return []
        n = 0
        while n < len(ops) and isinstance(ops[len(ops) - 1 - n], PolicyRule):
            n += 1
        return [o for o in ops[len(ops) - n :] if isinstance(o, PolicyRule)]

    def _index(self, name: str) -> int:
        if name not in self._ifindex:
            self.target.check_interface(name)
            ipr = getattr(self.backend, "ipr", None)
            found = ipr.link_lookup(ifname=name) if ipr is not None else []
            if not found:
                raise LookupError(f"interface {name!r} not found in netns {self.target.netns or '(current)'}")
            self._ifindex[name] = int(found[0])
        return self._ifindex[name]

    def teardown(self) -> list[Operation]:
        """Remove everything of FedShape's (read from the kernel, not the model); returns what was removed."""
        ops = teardown_operations(self.target, self.reconcile(), self.kinds)
        self.backend.apply(ops)
        self._state, self._applied_marks, self._applied_plan = None, None, None
        return ops

    def close(self) -> None:
        """Release sockets (the kernel state stays; call teardown to remove it)."""
        if self._fast is not None:
            self._fast.close()
        self.backend.close()

    def __enter__(self) -> KernelEnforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
