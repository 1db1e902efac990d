"""The testbed's tenant and workload: one ScenarioConfig for the kernel, the generators and the simulator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from shaping.baselines import AF21, AF41, BE, EF
from shaping.config import (
    ClassConfig,
    EntityConfig,
    LoadConfig,
    PathConfig,
    PathEventConfig,
    QoSConfig,
    ScenarioConfig,
    TenantConfig,
)
from shaping.spec import ClassShaping, ShapingPlan, TenantSpec, burst_bytes, tenant_spec
from shaping.testbed.measure import UDP_WIRE_OVERHEAD
from shaping.testbed.runner import Flow
from shaping.testbed.topology import TopologyConfig, names

#: Destination ports of the classes.
GAMING_PORT, TXN_PORT, BULK_PORT, PROBE_PORT = 5000, 5100, 5200, 5300
#: Bytes a full TCP segment takes on the wire (MSS 1448 with timestamps + TCP 32 + IP 20 + Ethernet 14).
TCP_WIRE_SEGMENT = 1514
TCP_MSS = 1448
#: The bulk application's maximum rate in the simulator, in bottleneck capacities: the testbed's sender
#: is not application-limited, and the simulator caps a bulk window at this rate times the RTT (at 1x
#: the two cubic flows' queue never formed in the simulator: 16 Mbit/s of 30 delivered).
BULK_APP_LIMIT = 10.0


@dataclass(frozen=True)
class Workload:
    """The offered traffic of the testbed's tenant."""

    gaming_players: int = 4
    """Players of the gaming class, each a 60 Hz UDP stream."""
    gaming_bytes: int = 120
    """UDP payload of a gaming update."""
    txn_rate_hz: float = 50.0
    """Transactions per second (Poisson)."""
    txn_connections: int = 4
    txn_bytes: int = 400
    """Request and response size."""
    deadline_ms: float = 100.0
    """Transaction deadline."""
    bulk_flows: int = 2
    """Bulk TCP connections (cubic)."""
    probe_pps: float = 0.0
    """UDP probe class rate (0: the class sends nothing), packets per second."""
    probe_bytes: int = 200
    """UDP probe payload."""

    def gaming_mbps(self) -> float:
        """Wire rate of the gaming class."""
        return self.gaming_players * 60.0 * (self.gaming_bytes + UDP_WIRE_OVERHEAD) * 8 / 1e6

    def txn_mbps(self) -> float:
        """Wire rate of the transactions' requests (one segment each, TCP/IP/Ethernet headers 66 bytes)."""
        return self.txn_rate_hz * (self.txn_bytes + 66) * 8 / 1e6

    def probe_mbps(self) -> float:
        """Wire rate of the probe class."""
        return self.probe_pps * (self.probe_bytes + UDP_WIRE_OVERHEAD) * 8 / 1e6


def testbed_scenario(
    topo: TopologyConfig,
    work: Workload,
    base_delay_ms: float = 0.1,
    *,
    path_events: Sequence[PathEventConfig] = (),
    control_interval_ms: float = 100.0,
) -> ScenarioConfig:
    """The scenario the testbed realizes: its two paths (capacity, buffer), one tenant, four classes.

    The tenant pays for the bottleneck's capacity; the load has no time variation (the generators
    offer constant rates), and the path names are the tenant's interfaces. ``path_events`` name those
    interfaces; shaping.testbed.paths realizes them on the router, the simulator simulates them.
    """
    nm = names(topo)
    paths = [
        PathConfig(name=nm.tenant_links[i], capacity_mbps=p.capacity_mbps, base_delay_ms=base_delay_ms,
                   buffer_ms=p.buffer_ms)
        for i, p in enumerate(topo.paths)
    ]  # fmt: skip
    cap = topo.paths[0].capacity_mbps
    classes = [
        ClassConfig(name="gaming", app="gaming", mbps=work.gaming_mbps(), flows=work.gaming_players, protocol="udp",
                    ports=[GAMING_PORT], qos=QoSConfig(max_p99_ms=20.0, max_loss=0.01)),
        ClassConfig(name="transactions", app="transactions", mbps=work.txn_mbps(), flows=work.txn_connections,
                    protocol="tcp", ports=[TXN_PORT], qos=QoSConfig(app_floor=0.95)),
        ClassConfig(name="bulk", app="bulk", mbps=BULK_APP_LIMIT * cap, flows=work.bulk_flows, protocol="tcp",
                    ports=[BULK_PORT]),
        ClassConfig(name="probe", app="web", mbps=max(work.probe_mbps(), 0.01), flows=1, protocol="udp",
                    ports=[PROBE_PORT]),
    ]  # fmt: skip
    tenant = TenantConfig(
        name="tb0", cap_mbps=cap, entities=[EntityConfig(name="vm0", cidrs=[f"{nm.tenant_addr}/32"])], classes=classes
    )
    still = LoadConfig(diurnal_amplitude=0.0, burst_prob=0.0, flash_crowd_prob=0.0, web_pareto=False)
    return ScenarioConfig(
        name="testbed", paths=paths, tenants=[tenant], load=still,
        root_levels=[0.3, 0.5, 0.7, 0.8, 0.9, 0.93, 1.0], path_events=list(path_events),
        control_interval_ms=control_interval_ms,
    )  # fmt: skip


def testbed_spec(topo: TopologyConfig, work: Workload) -> TenantSpec:
    """The spec of the testbed's tenant."""
    return tenant_spec(testbed_scenario(topo, work), 0)


def flows(work: Workload) -> list[Flow]:
    """The generators of the classes that send (the probe only when probe_pps > 0)."""
    out = [
        Flow("gaming", "gaming", GAMING_PORT, {"players": work.gaming_players, "size": work.gaming_bytes}),
        Flow("transactions", "transactions", TXN_PORT,
             {"rate_hz": work.txn_rate_hz, "connections": work.txn_connections, "response_bytes": work.txn_bytes,
              "deadline_ms": work.deadline_ms}, request_bytes=work.txn_bytes),
        Flow("bulk", "bulk", BULK_PORT, {"flows": work.bulk_flows}),
    ]  # fmt: skip
    if work.probe_pps > 0:
        count = 1_000_000  # the duration bounds it
        out.append(Flow("probe", "udp_blast", PROBE_PORT,
                        {"pps": work.probe_pps, "count": count, "size": work.probe_bytes}))  # fmt: skip
    return out


def _cls(rate: float, ceil: float, prio: int, dscp: int, drop: float = 0.0, path: int = 0) -> ClassShaping:
    return ClassShaping(rate, max(ceil, rate), burst_bytes(rate), prio, dscp, drop, path)


def shaped_plan(spec: TenantSpec, root_frac: float = 0.93) -> ShapingPlan:
    """The scripted policy's plan: interactive classes first and EF, bulk last, the root just below the bottleneck.

    Shaping the aggregate below the bottleneck moves the queue out of the provider's deep buffer
    into the tenant's HTB, where the priorities apply: that is what cuts the gaming class's delay.
    """
    root = root_frac * spec.bottleneck_share_mbps
    return ShapingPlan(spec.name, (
        _cls(2.0, root, 0, EF),
        _cls(2.0, root, 0, AF41),
        _cls(1.0, root, 3, BE),
        _cls(1.0, root, 2, AF21),
    ), root)  # fmt: skip


def static_rules_plan(spec: TenantSpec) -> ShapingPlan:
    """The tenant's static rules (the watchdog's fallback): priorities and marks, root at the full cap."""
    cap = spec.cap_mbps
    return ShapingPlan(spec.name, (
        _cls(2.0, cap, 0, EF),
        _cls(2.0, cap, 0, AF41),
        _cls(1.0, cap, 3, BE),
        _cls(1.0, cap, 2, AF21),
    ), cap)  # fmt: skip


def fifo_plan(spec: TenantSpec) -> ShapingPlan:
    """No shaping expressed as a plan (what the simulator runs for the unshaped testbed): one level, BE, root at cap."""
    cap = spec.cap_mbps
    return ShapingPlan(spec.name, tuple(_cls(0.01 * cap, cap, 0, BE) for _ in spec.classes), cap)


def with_class(plan: ShapingPlan, index: int, **changes: float | int) -> ShapingPlan:
    """The plan with one class's fields replaced (burst follows the rate)."""
    cs = replace(plan.classes[index], **changes)  # type: ignore[arg-type]
    cs = replace(cs, burst_bytes=burst_bytes(cs.rate_mbps), ceil_mbps=max(cs.ceil_mbps, cs.rate_mbps))
    classes = tuple(cs if i == index else c for i, c in enumerate(plan.classes))
    return replace(plan, classes=classes)
