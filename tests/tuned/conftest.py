"""A tiny congested scenario and budget shared by the tuned_static tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from shaping.config import ClassConfig, EntityConfig, PathConfig, QoSConfig, ScenarioConfig, TenantConfig
from shaping.tuned import TuneSettings


def tiny_scenario(capacity: float = 60.0) -> ScenarioConfig:
    """Two tenants on two paths that 150 Mbit/s of caps oversubscribe; `gamer` (3 classes) is controlled,
    `neighbour` (2 classes) keeps its static_priority plan."""
    gamer = TenantConfig(
        name="gamer",
        cap_mbps=80.0,
        entities=[EntityConfig(name="vm", cidrs=["10.0.0.1/32"])],
        classes=[
            ClassConfig(name="game", app="gaming", entity="vm", mbps=5.0, flows=50, protocol="udp",
                        qos=QoSConfig(max_p99_ms=30.0, max_loss=0.01)),
            ClassConfig(name="site", app="web", entity="vm", mbps=10.0, flows=20, qos=QoSConfig(max_p99_ms=150.0)),
            ClassConfig(name="backup", app="bulk", entity="vm", mbps=80.0, flows=4, qos=QoSConfig(min_mbps=5.0)),
        ],
    )  # fmt: skip
    neighbour = TenantConfig(
        name="neighbour",
        cap_mbps=70.0,
        policy="static_priority",
        entities=[EntityConfig(name="vm", cidrs=["10.0.1.1/32"])],
        classes=[
            ClassConfig(name="api", app="transactions", entity="vm", mbps=5.0, flows=50,
                        qos=QoSConfig(max_p99_ms=60.0)),
            ClassConfig(name="sync", app="bulk", entity="vm", mbps=70.0, flows=4),
        ],
    )  # fmt: skip
    return ScenarioConfig(
        name="tiny",
        paths=[PathConfig(name="eth0", capacity_mbps=capacity), PathConfig(name="eth1", capacity_mbps=40.0,
                                                                           base_delay_ms=20.0)],
        tenants=[gamer, neighbour],
        episode_steps=12,
        controlled=["gamer"],
    )  # fmt: skip


#: A budget of a fraction of a second on the tiny scenario.
TINY = TuneSettings(population=6, generations=3, seeds=2, steps=12, polish_rounds=1)


@pytest.fixture
def scenario() -> ScenarioConfig:
    """The tiny scenario."""
    return tiny_scenario()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny batches: one thread is fastest and leaves the CPU to tests running beside these."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
