"""Fixtures of the monitor tests: a one-tenant spec, a fake counter source, a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from shaping.config import ClassConfig, EntityConfig, PathConfig, QoSConfig, ScenarioConfig, TenantConfig
from shaping.monitor import ClassCounters, InterfaceCounters
from shaping.spec import TenantSpec, tenant_spec

CLASSIDS = (0x10010, 0x10011, 0x10012)


def scenario(subnet: int = 36, paths: int = 2) -> ScenarioConfig:
    """Tenant acme: game (udp 27015, VM), trades (tcp 9000, VM), backup (tcp 873, subnet)."""
    t = TenantConfig(
        name="acme",
        cap_mbps=100.0,
        entities=[
            EntityConfig(name="vm", kind="vm", cidrs=[f"10.200.{subnet}.1/32"], vcpus=2, memory_gib=1.0),
            EntityConfig(name="net", kind="subnet", cidrs=[f"10.200.{subnet + 1}.0/24"]),
        ],
        classes=[
            ClassConfig(name="game", app="gaming", entity="vm", mbps=5.0, protocol="udp", ports=[27015],
                        qos=QoSConfig(max_p99_ms=40.0)),
            ClassConfig(name="trades", app="transactions", entity="vm", mbps=5.0, ports=[9000],
                        qos=QoSConfig(max_p99_ms=50.0)),
            ClassConfig(name="backup", app="bulk", entity="net", mbps=50.0, ports=[873]),
        ],
    )  # fmt: skip
    return ScenarioConfig(name="mon", paths=[PathConfig(name=f"p{i}") for i in range(paths)], tenants=[t])


@pytest.fixture
def spec() -> TenantSpec:
    return tenant_spec(scenario(), 0)


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class FakeStats:
    """Counters the test sets (cumulative, like the kernel's)."""

    classes: dict[int, ClassCounters] = field(default_factory=dict)
    ifaces: dict[str, InterfaceCounters] = field(default_factory=dict)
    closed: bool = False

    def read_classes(self) -> dict[int, ClassCounters]:
        return dict(self.classes)

    def read_interfaces(self) -> dict[str, InterfaceCounters]:
        return dict(self.ifaces)

    def close(self) -> None:
        self.closed = True
