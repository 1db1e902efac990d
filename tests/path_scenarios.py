"""Scenarios with several paths that the shipped ones lack, shared by the routing and baseline tests."""

from __future__ import annotations

from shaping.config import ClassConfig, EntityConfig, PathConfig, QoSConfig, ScenarioConfig, TenantConfig


def four_paths() -> ScenarioConfig:
    """Tenant acme (cap 100) beside a rival (cap 100) on four paths whose order is not their delay order.

    acme's share is 100 / 200 of every path: wide 100, fast 25, mid 50, far 75 Mbit/s.
    """
    acme = TenantConfig(
        name="acme",
        cap_mbps=100.0,
        entities=[EntityConfig(name="vm", kind="vm", cidrs=["10.200.40.10/32"])],
        classes=[
            ClassConfig(name="game", app="gaming", entity="vm", mbps=6.0, flows=50, protocol="udp", ports=[27015],
                        qos=QoSConfig(max_p99_ms=40.0)),
            ClassConfig(name="trades", app="transactions", entity="vm", mbps=20.0, flows=100, ports=[9000],
                        qos=QoSConfig(max_p99_ms=60.0)),
            ClassConfig(name="site", app="web", entity="vm", mbps=30.0, flows=40, ports=[443],
                        qos=QoSConfig(max_p99_ms=300.0)),
            ClassConfig(name="backup", app="bulk", entity="vm", mbps=100.0, flows=8, ports=[873],
                        qos=QoSConfig(min_mbps=10.0)),
            ClassConfig(name="sync", app="bulk", entity="vm", mbps=60.0, flows=4, ports=[22]),
            ClassConfig(name="stream", app="video", entity="vm", mbps=10.0, flows=5, ports=[8443]),
        ],
    )  # fmt: skip
    rival = TenantConfig(
        name="rival",
        cap_mbps=100.0,
        entities=[EntityConfig(name="vm", kind="vm", cidrs=["10.200.41.10/32"])],
        classes=[ClassConfig(name="bulk", app="bulk", entity="vm", mbps=100.0, flows=4, ports=[22])],
    )
    return ScenarioConfig(
        name="four_paths",
        paths=[
            PathConfig(name="wide", capacity_mbps=400.0, base_delay_ms=40.0),
            PathConfig(name="fast", capacity_mbps=100.0, base_delay_ms=5.0),
            PathConfig(name="mid", capacity_mbps=200.0, base_delay_ms=15.0),
            PathConfig(name="far", capacity_mbps=300.0, base_delay_ms=60.0),
        ],
        tenants=[acme, rival],
    )
