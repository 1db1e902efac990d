"""A small hand-checkable tenant shared by the spec tests."""

from __future__ import annotations

import pytest
import torch

from shaping.config import ClassConfig, EntityConfig, PathConfig, QoSConfig, ScenarioConfig, TenantConfig
from shaping.spec import ClassMetrics, TenantSpec, tenant_spec


def class_metrics(base: dict[str, list[float]], **over: list[float]) -> ClassMetrics:
    """ClassMetrics from per-field lists, with some fields replaced."""
    return ClassMetrics(**{k: torch.tensor(v) for k, v in {**base, **over}.items()})


def small_scenario() -> ScenarioConfig:
    """Tenant acme (cap 100 Mbit/s): a VM and a subnet, three classes, two paths, default levels.

    game (gaming on web-vm): p99 <= 40 ms, loss <= 1%; backup (bulk on net): >= 10 Mbit/s;
    site (web on web-vm): no SLA.
    """
    tenant = TenantConfig(
        name="acme",
        cap_mbps=100.0,
        entities=[
            EntityConfig(name="web-vm", kind="vm", cidrs=["10.0.0.10/32"]),
            EntityConfig(name="net", kind="subnet", cidrs=["10.0.1.0/24"]),
        ],
        classes=[
            ClassConfig(name="game", app="gaming", entity="web-vm", mbps=10.0, protocol="udp", ports=[27015],
                        qos=QoSConfig(max_p99_ms=40.0, max_loss=0.01)),
            ClassConfig(name="backup", app="bulk", entity="net", mbps=100.0, ports=[873],
                        qos=QoSConfig(min_mbps=10.0)),
            ClassConfig(name="site", app="web", entity="web-vm", mbps=20.0, ports=[443]),
        ],
    )
    return ScenarioConfig(
        name="small", paths=[PathConfig(name="eth0"), PathConfig(name="eth1")], tenants=[tenant]
    )


@pytest.fixture
def scenario() -> ScenarioConfig:
    """A fresh copy of the small scenario (tests may mutate it)."""
    return small_scenario()


@pytest.fixture
def spec() -> TenantSpec:
    """The small scenario's tenant spec."""
    return tenant_spec(small_scenario(), 0)
