"""Fixtures of the control-loop tests: a small two-tenant scenario, a scriptable fake backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from shaping.config import ClassConfig, EntityConfig, PathConfig, QoSConfig, ScenarioConfig, TenantConfig
from shaping.control import Observed, build_observed
from shaping.spec import ClassMetrics, HostMetrics, ObservationLayout, ShapingPlan, TenantSpec, tenant_spec


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny networks and B=1 simulators: one thread is fastest and leaves the CPU to other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_scenario() -> ScenarioConfig:
    """Tenant acme (game with latency/loss SLA, backup with a rate SLA, site without) and a rival, 2 paths.

    Two substeps per interval keep the simulated steps cheap.
    """
    acme = TenantConfig(
        name="acme",
        cap_mbps=100.0,
        entities=[
            EntityConfig(name="web-vm", kind="vm", cidrs=["10.200.30.10/32"]),
            EntityConfig(name="net", kind="subnet", cidrs=["10.200.31.0/24"]),
        ],
        classes=[
            ClassConfig(name="game", app="gaming", entity="web-vm", mbps=10.0, flows=20, protocol="udp",
                        ports=[27015], qos=QoSConfig(max_p99_ms=40.0, max_loss=0.01)),
            ClassConfig(name="backup", app="bulk", entity="net", mbps=100.0, flows=4, ports=[873],
                        qos=QoSConfig(min_mbps=10.0)),
            ClassConfig(name="site", app="web", entity="web-vm", mbps=20.0, flows=10, ports=[443]),
        ],
    )  # fmt: skip
    rival = TenantConfig(
        name="rival",
        cap_mbps=100.0,
        entities=[EntityConfig(name="vm", kind="vm", cidrs=["10.200.32.10/32"])],
        classes=[ClassConfig(name="bulk", app="bulk", entity="vm", mbps=100.0, flows=4, ports=[22])],
    )
    return ScenarioConfig(
        name="small",
        paths=[PathConfig(name="eth0", capacity_mbps=120.0), PathConfig(name="eth1", capacity_mbps=60.0)],
        tenants=[acme, rival],
        substeps=2,
    )


@pytest.fixture
def scenario() -> ScenarioConfig:
    """A fresh copy of the small scenario."""
    return small_scenario()


@pytest.fixture
def spec() -> TenantSpec:
    """acme's spec."""
    return tenant_spec(small_scenario(), 0)


class FakeBackend:
    """A backend whose measurements the test sets: ``violating`` makes every SLA class break its SLA."""

    def __init__(self, spec: TenantSpec) -> None:
        self._spec = spec
        self.layout = ObservationLayout(spec)
        self.violating = False
        self.applied: list[ShapingPlan] = []
        self.fail_apply: ShapingPlan | None = None
        self.t = 0.0
        self.closed = False

    @property
    def spec(self) -> TenantSpec:
        return self._spec

    def observe(self) -> Observed:
        n, v = len(self.spec.classes), len(self.spec.vms)
        delay = 500.0 if self.violating else 5.0
        m = ClassMetrics(
            offered_mbps=torch.full((n,), 10.0),
            delivered_mbps=torch.full((n,), 1.0 if self.violating else 10.0),
            demand_mbps=torch.full((n,), 10.0),
            loss=torch.full((n,), 0.5 if self.violating else 0.0),
            delay_mean_ms=torch.full((n,), delay),
            delay_p99_ms=torch.full((n,), delay),
            base_delay_ms=torch.full((n,), 5.0),
            app_metric=torch.ones(n),
        )
        self.t += 0.1
        return build_observed(self.layout, m, HostMetrics(torch.zeros(v), torch.zeros(v)), self.t, 0.1)

    def apply(self, plan: ShapingPlan) -> None:
        if self.fail_apply is not None and plan == self.fail_apply:
            raise OSError("kernel said no")
        self.applied.append(plan)

    def close(self) -> None:
        self.closed = True
