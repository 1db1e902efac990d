"""Path choice: one default route per path's routing table and one fwmark rule per class (IPv4)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pyroute2.netlink.rtnl import rt_proto

from shaping.enforce.kinds.base import NetlinkContext
from shaping.enforce.ops import KernelState, Operation, Verb, PolicyRuleState, RouteState
from shaping.enforce.target import EnforceTarget
from shaping.spec.plan import ShapingPlan
from shaping.spec.tenant import TenantSpec


@dataclass(frozen=True)
class TableRoute(Operation):
    """Add, replace or delete the default route of a path's table."""

    kind: ClassVar[str] = "routing"
    table: int
    interface: str
    gateway: str | None = None


@dataclass(frozen=True)
class PolicyRule(Operation):
    """Add or delete ``fwmark MARK lookup TABLE priority PRIO`` (rules have no replace: delete, then add)."""

    kind: ClassVar[str] = "routing"
    priority: int
    fwmark: int
    table: int


def desired(
    spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget
) -> tuple[dict[int, RouteState], dict[int, PolicyRuleState]]:
    """Routes by table and rules by priority that the plan needs."""
    routes = {p.table: RouteState(p.interface, p.gateway) for p in target.paths if p.table is not None}
    rules: dict[int, PolicyRuleState] = {}
    for i, cs in enumerate(plan.classes):
        table = target.paths[cs.path].table
        if table is not None:
            rules[target.rule_priority_base + i] = PolicyRuleState(target.mark(i), table)
    return routes, rules


class RoutingKind:
    """Plans, records, applies and reads policy routing."""

    name = "routing"

    def plan(self, spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Routes first (a rule must never point at an empty table), then rules."""
        routes, rules = desired(spec, plan, target)
        ops: list[Operation] = []
        for table, r in routes.items():
            if current.routes.get(table) != r:
                verb: Verb = "replace" if table in current.routes else "add"
                ops.append(TableRoute(verb, table, r.interface, r.gateway))
        for prio, have in sorted(current.rules.items()):
            if rules.get(prio) != have:
                ops.append(PolicyRule("delete", prio, have.fwmark, have.table))
        for prio, want in sorted(rules.items()):
            if current.rules.get(prio) != want:
                ops.append(PolicyRule("add", prio, want.fwmark, want.table))
        for table, r in sorted(current.routes.items()):
            if table not in routes:
                ops.append(TableRoute("delete", table, r.interface, r.gateway))
        return ops

    def teardown(self, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Rules first, then the routes they pointed at."""
        ops: list[Operation] = [PolicyRule("delete", p, r.fwmark, r.table) for p, r in sorted(current.rules.items())]
        ops += [TableRoute("delete", t, r.interface, r.gateway) for t, r in sorted(current.routes.items())]
        return ops

    def record(self, state: KernelState, op: Operation) -> None:
        """Model the kernel's routing tables."""
        if isinstance(op, TableRoute):
            if op.verb == "delete":
                state.routes.pop(op.table, None)
            else:
                state.routes[op.table] = RouteState(op.interface, op.gateway)
        elif isinstance(op, PolicyRule):
            if op.verb == "delete":
                state.rules.pop(op.priority, None)
            else:
                state.rules[op.priority] = PolicyRuleState(op.fwmark, op.table)

    def apply(self, ctx: NetlinkContext, ops: Sequence[Operation]) -> None:
        """One acknowledged netlink request per operation."""
        for op in ops:
            if isinstance(op, TableRoute):
                kw: dict[str, object] = {"dst": "0.0.0.0/0", "table": op.table, "oif": ctx.ifindex(op.interface)}
                if op.gateway:
                    kw["gateway"] = op.gateway
                if op.verb == "delete":
                    ctx.ipr.route("del", table=op.table, dst="0.0.0.0/0")
                else:
                    ctx.ipr.route(op.verb, proto=rt_proto["static"], **kw)
            elif isinstance(op, PolicyRule):
                cmd = "del" if op.verb == "delete" else "add"
                ctx.ipr.rule(
                    cmd,
                    family=socket.AF_INET,
                    priority=op.priority,
                    fwmark=op.fwmark,
                    fwmask=0xFFFFFFFF,
                    table=op.table,
                )

    def read(self, ctx: NetlinkContext, state: KernelState) -> None:
        """Rules in the target's priority range with a mark of ours; default routes of the target's tables."""
        t = ctx.target
        lo, hi = t.rule_priority_base, t.rule_priority_base + 256
        for msg in ctx.ipr.get_rules(family=socket.AF_INET):
            prio = msg.get_attr("FRA_PRIORITY") or 0
            mark = msg.get_attr("FRA_FWMARK")
            if lo <= prio < hi and mark is not None and mark & ~0xFF == t.fwmark_base:
                table = msg.get_attr("FRA_TABLE") or msg["table"]
                state.rules[int(prio)] = PolicyRuleState(int(mark), int(table))
        names = {int(i): n for n in t.interfaces for i in ctx.ipr.link_lookup(ifname=n)}
        for table in t.tables:
            for msg in ctx.ipr.get_routes(family=socket.AF_INET, table=table):
                if msg["dst_len"] != 0 or (msg.get_attr("RTA_TABLE") or msg["table"]) != table:
                    continue
                oif = msg.get_attr("RTA_OIF")
                state.routes[table] = RouteState(
                    names.get(int(oif or 0), f"ifindex:{oif}"), msg.get_attr("RTA_GATEWAY")
                )


KIND = RoutingKind()
