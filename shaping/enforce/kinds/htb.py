"""HTB qdisc and classes: one tree per shaped interface, a class per traffic class, through pyroute2 netlink."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pyroute2.netlink.rtnl import TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime

from shaping.enforce.kinds.base import NetlinkContext
from shaping.enforce.ops import HtbClassState, HtbQdiscState, KernelState, Operation
from shaping.enforce.target import HTB_PRIORITIES, EnforceTarget
from shaping.spec.plan import ShapingPlan, burst_bytes
from shaping.spec.tenant import SpecError, TenantSpec

#: HTB serves priorities 0..7 (TC_HTB_NUMPRIO 8 in include/uapi/linux/pkt_sched.h).
MAX_PRIO = HTB_PRIORITIES - 1
#: Burst of the default class (the smallest a plan gives).
MIN_BURST = burst_bytes(0.0)
#: tc_htb_opt carries buffer and cbuffer (burst as transmission time in psched ticks) as __u32.
_U32 = 2**32 - 1


def mbps_to_bytes(mbps: float) -> int:
    """Rate in bytes per second, as HTB's tc_ratespec carries it."""
    return max(1, round(mbps * 1e6 / 8))


def buffer_ticks(rate: int, burst: int) -> int:
    """Token bucket depth in psched ticks, the unit HTB stores and dumps (pyroute2's port of tc's formula)."""
    return int(calc_xmittime(rate, burst))


@dataclass(frozen=True)
class HtbQdisc(Operation):
    """Install (replacing the interface's root qdisc) or delete the tenant's HTB root qdisc."""

    kind: ClassVar[str] = "htb"
    interface: str
    handle: int
    default_minor: int


@dataclass(frozen=True)
class HtbClass(Operation):
    """Add, change (all parameters: pyroute2 0.9.7 change-class replaces every one) or delete an HTB class."""

    kind: ClassVar[str] = "htb"
    interface: str
    classid: int
    parent: int
    rate: int = 0
    """bytes/s"""
    ceil: int = 0
    """bytes/s"""
    burst: int = 0
    """bytes"""
    cburst: int = 0
    """bytes"""
    prio: int = 0

    def state(self) -> HtbClassState:
        """The class as the kernel will report it."""
        return HtbClassState(
            self.parent,
            self.rate,
            self.ceil,
            buffer_ticks(self.rate, self.burst),
            buffer_ticks(self.ceil, self.cburst),
            self.prio,
        )


def check_limits(what: str, rate_mbps: float, burst: int, prio: int = 0) -> None:
    """Raise SpecError, naming ``what`` and the field, when HTB cannot carry a class's values.

    Checked in the pure planner so that no netlink request is built: pyroute2 packs the values
    into tc_htb_opt's unsigned 32-bit fields and fails with a bare struct.error mid-apply.

    Args:
        what: the class, for the message ("class 'game'", "root").
        rate_mbps: the rate whose token bucket holds ``burst``.
        burst: bucket depth in bytes.
        prio: HTB priority.
    """
    if not 0 <= prio <= MAX_PRIO:
        raise SpecError(f"{what}: priority {prio} outside HTB's 0..{MAX_PRIO}")
    if not 0 < burst <= _U32:
        raise SpecError(f"{what}: burst {burst} bytes outside 1..{_U32}")
    ticks = buffer_ticks(mbps_to_bytes(rate_mbps), burst)
    if ticks > _U32:
        # The bucket's depth is stored as the time to send the burst at the rate: too slow a rate overflows it.
        least = burst * 8 / 1e6 / (_U32 / buffer_ticks(1, 1))
        raise SpecError(f"{what}: rate {rate_mbps:.6g} Mbit/s is too small for HTB with a {burst}-byte burst "
                        f"(at least {least:.3g} Mbit/s)")  # fmt: skip


def desired_classes(spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget) -> list[HtbClass]:
    """Every class the plan needs on every shaped interface, parents before children (verb add).

    Raises:
        SpecError: a rate, burst or priority HTB cannot carry (``check_limits``), named.
    """
    dflt_mbps = min(target.default_rate_mbps, plan.root_mbps)
    check_limits(f"tenant {spec.name!r}: root", plan.root_mbps, burst_bytes(plan.root_mbps))
    check_limits(f"tenant {spec.name!r}: default class", dflt_mbps, MIN_BURST)
    for tc, cs in zip(spec.classes, plan.classes, strict=True):
        check_limits(f"class {tc.name!r}", cs.rate_mbps, cs.burst_bytes, cs.priority)
        check_limits(f"class {tc.name!r}: ceil", cs.ceil_mbps, burst_bytes(cs.ceil_mbps))
    root = mbps_to_bytes(plan.root_mbps)
    root_burst = burst_bytes(plan.root_mbps)
    out: list[HtbClass] = []
    for iface in target.interfaces:
        out.append(HtbClass("add", iface, target.root_classid, target.qdisc_handle, root, root, root_burst, root_burst))
        dflt = mbps_to_bytes(dflt_mbps)
        out.append(
            HtbClass(
                "add", iface, target.default_classid, target.root_classid, dflt, root, MIN_BURST, root_burst, MAX_PRIO
            )
        )
        for i, cs in enumerate(plan.classes):
            out.append(
                HtbClass(
                    "add",
                    iface,
                    target.classid(i),
                    target.root_classid,
                    mbps_to_bytes(cs.rate_mbps),
                    mbps_to_bytes(cs.ceil_mbps),
                    cs.burst_bytes,
                    burst_bytes(cs.ceil_mbps),
                    cs.priority,
                )
            )
    return out


class HtbKind:
    """Plans, records, applies and reads the HTB part of the kernel state."""

    name = "htb"

    def plan(self, spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Qdiscs missing, classes missing or different, classes of ours no longer wanted."""
        ops: list[Operation] = []
        default_minor = target.default_classid & 0xFFFF
        for iface in target.interfaces:
            if current.qdiscs.get(iface) != HtbQdiscState(target.qdisc_handle, default_minor):
                ops.append(HtbQdisc("add", iface, target.qdisc_handle, default_minor))
        fresh = {o.interface for o in ops if isinstance(o, HtbQdisc)}
        wanted = desired_classes(spec, plan, target)
        keys = {(c.interface, c.classid) for c in wanted}
        for c in wanted:
            have = None if c.interface in fresh else current.classes.get((c.interface, c.classid))
            if have is None:
                ops.append(c)
            elif have != c.state():
                ops.append(
                    HtbClass("change", c.interface, c.classid, c.parent, c.rate, c.ceil, c.burst, c.cburst, c.prio)
                )
        # Leftovers (a spec that lost classes): children before the root, so deletes never hit a parent.
        stale = [k for k in current.classes if k not in keys and k[0] not in fresh]
        for iface, classid in sorted(stale, key=lambda k: (k[0], k[1] == target.root_classid, k[1])):
            ops.append(HtbClass("delete", iface, classid, current.classes[(iface, classid)].parent))
        return ops

    def teardown(self, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Deleting the root qdisc removes every class under it."""
        return [HtbQdisc("delete", iface, q.handle, q.default_minor) for iface, q in sorted(current.qdiscs.items())]

    def record(self, state: KernelState, op: Operation) -> None:
        """Model the kernel's reaction to one operation."""
        if isinstance(op, HtbQdisc):
            for key in [k for k in state.classes if k[0] == op.interface]:
                del state.classes[key]
            if op.verb == "delete":
                state.qdiscs.pop(op.interface, None)
            else:
                state.qdiscs[op.interface] = HtbQdiscState(op.handle, op.default_minor)
        elif isinstance(op, HtbClass):
            if op.verb == "delete":
                state.classes.pop((op.interface, op.classid), None)
            else:
                state.classes[(op.interface, op.classid)] = op.state()

    def apply(self, ctx: NetlinkContext, ops: Sequence[Operation]) -> None:
        """One netlink request per operation, acknowledged (pyroute2 raises NetlinkError on a nack)."""
        for op in ops:
            idx = ctx.ifindex(op.interface) if isinstance(op, HtbQdisc | HtbClass) else 0
            if isinstance(op, HtbQdisc):
                if op.verb == "delete":
                    ctx.ipr.tc("del", "htb", idx, op.handle, parent=TC_H_ROOT)
                else:
                    # replace: the interface is ours (named in the target), whatever root qdisc it had goes.
                    ctx.ipr.tc("replace", "htb", idx, op.handle, parent=TC_H_ROOT, default=op.default_minor)
            elif isinstance(op, HtbClass):
                if op.verb == "delete":
                    ctx.ipr.tc("del-class", "htb", idx, op.classid, parent=op.parent)
                else:
                    ctx.ipr.tc(
                        "add-class" if op.verb == "add" else "change-class",
                        "htb",
                        idx,
                        op.classid,
                        parent=op.parent,
                        rate=op.rate,
                        ceil=op.ceil,
                        burst=op.burst,
                        cburst=op.cburst,
                        prio=op.prio,
                    )

    def read(self, ctx: NetlinkContext, state: KernelState) -> None:
        """Our HTB root qdisc and its classes on every target interface that exists."""
        for iface in ctx.target.interfaces:
            found = ctx.ipr.link_lookup(ifname=iface)
            if not found:
                continue
            idx = int(found[0])
            ours = False
            for msg in ctx.ipr.get_qdiscs(index=idx):
                if msg["parent"] == TC_H_ROOT and msg.get_attr("TCA_KIND") == "htb":
                    if msg["handle"] == ctx.target.qdisc_handle:
                        init = msg.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_INIT")
                        state.qdiscs[iface] = HtbQdiscState(msg["handle"], int(init["defcls"]))
                        ours = True
            if not ours:
                continue
            for msg in ctx.ipr.get_classes(index=idx):
                if msg.get_attr("TCA_KIND") != "htb" or msg["handle"] >> 16 != ctx.target.handle_major:
                    continue
                parms = msg.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_PARMS")
                # The kernel dumps a top-level class with parent TC_H_ROOT; we add it under the qdisc handle.
                parent = int(msg["parent"])
                state.classes[(iface, int(msg["handle"]))] = HtbClassState(
                    ctx.target.qdisc_handle if parent == TC_H_ROOT else parent,
                    int(parms["rate"]),
                    int(parms["ceil"]),
                    int(parms["buffer"]),
                    int(parms["cbuffer"]),
                    int(parms["prio"]),
                )


KIND = HtbKind()
