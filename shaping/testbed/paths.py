"""Scheduled path events on the testbed, applied through netlink at their control step, and the tenant's path probes.

A scenario's ``path_events`` (shaping.config.PathEventConfig) become one state per path and control
step, compiled by shaping.sim.events exactly as the simulator compiles them:

- down (capacity_factor 0, or loss 1): a policy rule at the router (``iif`` the router's side of the
  path link, priority ROUTER_DOWN_PRIORITY + i) looks everything the path carries up in a table
  holding one blackhole route, so the path drops all of it silently while its links stay up, as a
  provider path failing beyond the tenant's first hop (answers to the tenant, which come back over
  b0, are not affected);
- degraded (0 < capacity_factor < 1): the router's bottleneck TBF on the path runs at factor x the
  path's capacity (its buffer keeps its size in bytes, as the simulator's does);
- back to normal: the rule deleted, the TBF at the path's capacity.

Setting the router's link down instead took 90-110 ms of netlink call with traffic on it on the loaded
2-core host (kernel 6.18; dev_close waits for RCU grace periods), half a 0.2 s control interval, and
the tenant's ARP retries (1 s apart by default) delayed the path's return by up to 1 s; adding or
deleting a rule takes about 1 ms.

The testbed has no netem, so an added delay or a partial loss cannot be realized: such events are
refused, naming the event. ``plan_path_ops`` turns a change of states into operations (pure),
``apply_path_ops`` applies them in the router namespace with pyroute2.

Steps count like the simulator's: interval 0 is the one the first observe measures (from the
monitor's start), and loop step k observes interval k. ``ScheduledPaths`` wraps a backend and applies
the row of interval k + 1 right before the observe that closes interval k (and opens k + 1), so
interval k + 1 runs entirely under it, as simulated step k + 1 does; interval k ends with the few
milliseconds the netlink calls take under the new state.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL

from shaping.config import ScenarioConfig
from shaping.control.backend import Backend, Observed
from shaping.monitor.pathprobe import PathProbeConfig, PathProber, PathProbeTarget
from shaping.sim.events import compile_events
from shaping.spec import ShapingPlan, TenantSpec
from shaping.testbed.topology import (
    ROUTER_BLACKHOLE_TABLE,
    ROUTER_DOWN_PRIORITY,
    Testbed,
    TestbedError,
    TopologyConfig,
    bottleneck_burst,
    bottleneck_limit,
    names,
)

LOG = logging.getLogger("fedshape.testbed.paths")

#: UDP port of the sink's echo that answers the path probes (no traffic class of the testbed uses it).
PATH_PROBE_PORT = 5400
#: Longest life of the testbed's probing thread, seconds (it stops by itself).
PROBE_MAX_S = 300.0


@dataclass(frozen=True)
class PathState:
    """One path during one control interval."""

    up: bool = True
    capacity_factor: float = 1.0
    """Multiplier of the path's capacity while up."""

    @property
    def label(self) -> str:
        """up, down, or degraded xF (reports)."""
        if not self.up:
            return "down"
        return "up" if self.capacity_factor >= 1.0 else f"degraded x{self.capacity_factor:g}"


NOMINAL: tuple[PathState, PathState] = (PathState(), PathState())


@dataclass(frozen=True)
class PathSchedule:
    """Each path's state per control step; steps past the last row keep it (the state after every change)."""

    rows: tuple[tuple[PathState, ...], ...]

    def state(self, step: int) -> tuple[PathState, ...]:
        """The paths' states during interval ``step``."""
        return self.rows[min(max(step, 0), len(self.rows) - 1)]

    @property
    def changes(self) -> list[int]:
        """Steps whose row differs from the previous one (step 0 when it is not all up)."""
        out = [0] if self.rows[0] != NOMINAL[: len(self.rows[0])] else []
        return out + [t for t in range(1, len(self.rows)) if self.rows[t] != self.rows[t - 1]]


def path_schedule(scenario: ScenarioConfig) -> PathSchedule:
    """The scenario's path events as testbed states per step (shaping.sim.events' tables, so overlaps agree).

    Raises:
        TestbedError: an event adds delay or a partial loss (no netem here), naming the event.
        shaping.sim.events.EventError: an event the scenario itself refuses.
    """
    for i, event in enumerate(scenario.path_events):
        if event.extra_delay_ms > 0:
            raise TestbedError(f"path_events[{i}]: the testbed cannot add delay (extra_delay_ms="
                               f"{event.extra_delay_ms}): this kernel has no netem")  # fmt: skip
        if 0 < event.loss < 1 and event.capacity_factor > 0:
            raise TestbedError(f"path_events[{i}]: the testbed realizes no partial loss (loss={event.loss}); "
                               "capacity_factor 0 or loss 1 takes the path down")  # fmt: skip
    n_classes = max([len(t.classes) for t in scenario.tenants] + [1])
    ev = compile_events(scenario, n_classes)
    rows = []
    for t in range(ev.steps):
        row = []
        for p in range(len(scenario.paths)):
            down = float(ev.loss[t, p]) >= 1.0
            row.append(PathState(False) if down else PathState(True, round(float(ev.capacity[t, p]), 6)))
        rows.append(tuple(row))
    return PathSchedule(tuple(rows))


@dataclass(frozen=True)
class PathOp:
    """One change of a path at the router."""

    kind: ClassVar[str] = ""
    path: int
    interface: str


@dataclass(frozen=True)
class DownOp(PathOp):
    """Fail a path (add the rule sending what arrives on ``interface`` to the blackhole table) or restore it."""

    kind: ClassVar[str] = "down"
    down: bool
    priority: int


@dataclass(frozen=True)
class RateOp(PathOp):
    """Change the rate of the router's bottleneck TBF on a path (its queue limit stays)."""

    kind: ClassVar[str] = "rate"
    rate_mbps: float
    burst: int
    limit: int


def plan_path_ops(topo: TopologyConfig, old: Sequence[PathState] | None, new: Sequence[PathState]) -> list[PathOp]:
    """Operations from the states ``old`` (None: as built, all up at capacity) to ``new``.

    Paths fail first, then rates change, then paths come back (a path returns at its new rate).
    """
    old = tuple(old) if old is not None else NOMINAL[: len(new)]
    nm = names(topo)
    downs: list[PathOp] = []
    rates: list[PathOp] = []
    ups: list[PathOp] = []
    for p, (a, b) in enumerate(zip(old, new, strict=True)):
        if a.up and not b.up:
            downs.append(DownOp(p, nm.router_in[p], True, ROUTER_DOWN_PRIORITY + p))
        if a.capacity_factor != b.capacity_factor:
            link = topo.paths[p]
            rate = link.capacity_mbps * b.capacity_factor
            rates.append(RateOp(p, nm.router_out[p], rate, bottleneck_burst(rate), bottleneck_limit(link)))
        if not a.up and b.up:
            ups.append(DownOp(p, nm.router_in[p], False, ROUTER_DOWN_PRIORITY + p))
    return downs + rates + ups


def apply_path_ops(tb: Testbed, ops: Sequence[PathOp], ipr: Any = None) -> None:
    """Apply the operations in the router namespace through netlink (policy rule add/delete, TBF change).

    Args:
        ipr: an open netlink handle in the router namespace (``tb.ipr(router_ns)``); None: one is opened
            for the call (30-50 ms on a loaded host: ScheduledPaths keeps one open).
    """
    if not ops:
        return
    if ipr is None:
        with tb.ipr(tb.names.router_ns) as own:
            apply_path_ops(tb, ops, own)
        return
    for op in ops:
        found = ipr.link_lookup(ifname=op.interface)
        if not found:
            raise TestbedError(f"no link {op.interface} in {tb.names.router_ns}")
        idx = found[0]
        if isinstance(op, DownOp):
            ipr.rule("add" if op.down else "del", family=socket.AF_INET, iifname=op.interface,
                     table=ROUTER_BLACKHOLE_TABLE, priority=op.priority, action=FR_ACT_TO_TBL)  # fmt: skip
        elif isinstance(op, RateOp):
            root = [q for q in ipr.get_qdiscs(index=idx) if q["parent"] == 0xFFFFFFFF]
            if not root or root[0].get_attr("TCA_KIND") != "tbf":
                raise TestbedError(f"no root TBF on {op.interface} in {tb.names.router_ns}")
            ipr.tc("change", "tbf", index=idx, handle=root[0]["handle"], rate=f"{int(op.rate_mbps * 1e6)}bit",
                   burst=op.burst, limit=op.limit)  # fmt: skip


class ScheduledPaths:
    """A backend whose testbed paths follow a schedule: interval k + 1's states are applied right before the
    observe that closes interval k (and interval 0's at construction).

    Each Observed gets ``info["step"]`` (its interval) and ``info["path_state"]`` (each path's state in
    force during it). ``close`` brings every path back to normal, then closes the inner backend.

    Args:
        inner: the tenant's backend (KernelBackend on the testbed).
        tb: the testbed whose router realizes the states.
        schedule: the states per step (``path_schedule``).
        on_observe: called with every Observed (reports).
        clock: monotonic clock of the change log.
    """

    def __init__(
        self,
        inner: Backend,
        tb: Testbed,
        schedule: PathSchedule,
        *,
        on_observe: Callable[[Observed], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner, self.tb, self.schedule = inner, tb, schedule
        self.on_observe, self.clock = on_observe, clock
        self.step = 0
        """The interval in progress."""
        self.current: tuple[PathState, ...] | None = None
        self.changes: list[dict[str, Any]] = []
        """Every change applied: step, time, seconds the netlink calls took, operations, states."""
        self._ipr = tb.ipr(tb.names.router_ns)  # held open: opening one costs 30-50 ms under load
        try:
            self._enter(0)
        except BaseException:
            self._ipr.close()
            raise

    @property
    def spec(self) -> TenantSpec:
        """The inner backend's tenant."""
        return self.inner.spec

    def _enter(self, step: int) -> None:
        new = self.schedule.state(step)
        ops = plan_path_ops(self.tb.cfg, self.current, new)
        if ops:
            t0 = self.clock()
            apply_path_ops(self.tb, ops, self._ipr)
            self.changes.append({"step": step, "time_s": t0, "apply_s": round(self.clock() - t0, 4),
                                 "ops": [_describe(op) for op in ops], "state": [s.label for s in new]})  # fmt: skip
            LOG.info("paths at step %d: %s", step, ", ".join(s.label for s in new))
        self.current = new

    def observe(self) -> Observed:
        """The paths move to interval k + 1's states, then the inner backend closes interval k (labelled)."""
        if self.step == 0:
            # pyroute2 0.9 opens a handle's socket once per thread, forking a child into the namespace; a
            # fork of this process stalls every thread (the path probes too) for up to 0.15 s under load:
            # let it happen in the warm-up interval, not at the first scheduled change.
            self._ipr.link_lookup(ifname=self.tb.names.router_in[0])
        self._enter(self.step + 1)
        obs = self.inner.observe()
        info = {**obs.info, "step": self.step, "path_state": [s.label for s in self.schedule.state(self.step)]}
        obs = replace(obs, info=info)
        if self.on_observe is not None:
            self.on_observe(obs)
        self.step += 1
        return obs

    def apply(self, plan: ShapingPlan) -> None:
        """The inner backend applies the plan."""
        self.inner.apply(plan)

    def close(self) -> None:
        """Every path back to normal, then the inner backend closed."""
        try:
            if self.current is not None:
                ops = plan_path_ops(self.tb.cfg, self.current, NOMINAL[: len(self.current)])
                apply_path_ops(self.tb, ops, self._ipr)
                self.current = None
        finally:
            self._ipr.close()
            self.inner.close()


def _describe(op: PathOp) -> str:
    if isinstance(op, DownOp):
        return f"iif {op.interface} {'blackholed' if op.down else 'forwarded'}"
    if isinstance(op, RateOp):
        return f"{op.interface} tbf rate {op.rate_mbps:g} Mbit/s"
    return repr(op)


def tenant_path_prober(tb: Testbed, config: PathProbeConfig | None = None, nice: int | None = -10) -> PathProber:
    """The tenant's path probes: one socket bound to each path interface (and its address), answered by the
    sink's UDP echo on PATH_PROBE_PORT (run_flows' ``echo_ports``); one-way delays from the shared clock.

    Not started: call ``start()`` once the sink answers.
    """
    nm = tb.names
    targets = [PathProbeTarget(nm.sink_service, PATH_PROBE_PORT, nm.tenant_links[i], nm.tenant_addrs[i])
               for i in range(len(nm.tenant_links))]  # fmt: skip
    cfg = config or PathProbeConfig(one_way="reflector_clock", max_s=PROBE_MAX_S)
    return PathProber(targets, cfg, netns=nm.tenant_ns, nice=nice)
