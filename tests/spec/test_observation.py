"""ObservationLayout: size, labels and the values of every block on hand-made metrics."""

from __future__ import annotations

import pytest
import torch

from shaping.spec import (
    ClassMetrics,
    ClassShaping,
    HostMetrics,
    ObservationLayout,
    PathMetrics,
    ShapingPlan,
    TenantSpec,
    plan_tensors,
)
from shaping.spec.observation import LOAD_CLIP, RTT_CLIP, RTT_SCALE_MS
from tests.spec.conftest import class_metrics

BASE = {
    "offered_mbps": [10.0, 50.0, 20.0],
    "delivered_mbps": [9.0, 40.0, 20.0],
    "demand_mbps": [10.0, 100.0, 20.0],
    "loss": [0.1, 0.2, 0.0],
    "delay_mean_ms": [15.0, 300.0, 900.0],
    "delay_p99_ms": [20.0, 500.0, 2000.0],
    "base_delay_ms": [10.0, 10.0, 10.0],
    "app_metric": [0.9, 0.4, 0.5],
}


def metrics(**over: list[float]) -> ClassMetrics:
    """Metrics of game, backup, site (see conftest) with the given fields replaced."""
    return class_metrics(BASE, **over)


HOST = HostMetrics(cpu=torch.tensor([0.3]), memory=torch.tensor([0.6]))
#: eth0 (200 Mbit/s published) carries 20 Mbit/s of the tenant's, eth1 (200 Mbit/s) 60.
PATHS = PathMetrics(delay_ms=torch.tensor([12.0, 2500.0]), loss=torch.tensor([0.0, 1.0]),
                    delivered_mbps=torch.tensor([20.0, 60.0]))  # fmt: skip
#: game on eth0 at priority 0 and EF, backup on eth1 at priority 3 dropping 10%, site on eth0; root 80.
PLAN = ShapingPlan("acme", (
    ClassShaping(rate_mbps=10.0, ceil_mbps=50.0, burst_bytes=3000, priority=0, dscp=46, drop_prob=0.0, path=0),
    ClassShaping(rate_mbps=20.0, ceil_mbps=100.0, burst_bytes=3000, priority=3, dscp=0, drop_prob=0.1, path=1),
    ClassShaping(rate_mbps=5.0, ceil_mbps=25.0, burst_bytes=3000, priority=2, dscp=18, drop_prob=0.0, path=0),
), root_mbps=80.0)  # fmt: skip


def build(layout: ObservationLayout, m: ClassMetrics, host: HostMetrics = HOST) -> torch.Tensor:
    """The observation with the module's path metrics and plan in force."""
    return layout.build(m, host, PATHS, plan_tensors(PLAN))


def test_size_and_labels(spec: TenantSpec):
    layout = ObservationLayout(spec)
    # 2 entities, 3 classes, 1 VM, 2 paths: 2 * 2 + 4 * 3 + 2 * 1 + 4 * 2 + 5 * 3 + 3 * 2 + 1.
    assert layout.size == 48
    assert layout.names == [
        "entity_util[web-vm]", "entity_util[net]", "entity_loss[web-vm]", "entity_loss[net]",
        "class_rtt[game]", "class_rtt[backup]", "class_rtt[site]",
        "class_app[game]", "class_app[backup]", "class_app[site]",
        "class_offered[game]", "class_offered[backup]", "class_offered[site]",
        "class_delivered[game]", "class_delivered[backup]", "class_delivered[site]",
        "vm_cpu[web-vm]", "vm_memory[web-vm]",
        "path_delay[eth0]", "path_delay[eth1]", "path_loss[eth0]", "path_loss[eth1]",
        "path_util[eth0]", "path_util[eth1]", "path_share[eth0]", "path_share[eth1]",
        "plan_rate[game]", "plan_rate[backup]", "plan_rate[site]",
        "plan_ceil[game]", "plan_ceil[backup]", "plan_ceil[site]",
        "plan_priority[game]", "plan_priority[backup]", "plan_priority[site]",
        "plan_dscp[game]", "plan_dscp[backup]", "plan_dscp[site]",
        "plan_drop[game]", "plan_drop[backup]", "plan_drop[site]",
        "plan_path[game@eth0]", "plan_path[game@eth1]", "plan_path[backup@eth0]", "plan_path[backup@eth1]",
        "plan_path[site@eth0]", "plan_path[site@eth1]",
        "plan_root[root]",
    ]


def test_values_by_hand(spec: TenantSpec):
    """web-vm carries game and site: util (9 + 20) / 100, loss (10 * 0.1 + 0) / 30; net carries backup:
    util 40 / 100, loss 0.2. RTT: game 20 / its 40 ms SLA, backup 500 / RTT_SCALE_MS, site 2000 / 100
    clipped to RTT_CLIP. Offered and delivered over the 100 Mbit/s cap. Paths: probe delays 12 ms and
    2500 ms over RTT_SCALE_MS (the second clipped), loss 0 and 1 (eth1 is down), the tenant's 20 and 60
    Mbit/s over the 200 Mbit/s published, shares 1/4 and 3/4. The plan in force over the cap, the
    priority over 3 levels, DSCP over 63, and each class's path one-hot."""
    assert RTT_SCALE_MS == 100.0 and RTT_CLIP == 10.0
    obs = build(ObservationLayout(spec), metrics())
    expected = [
        0.29, 0.40, 1.0 / 30.0, 0.2,
        0.5, 5.0, 10.0,
        0.9, 0.4, 0.5,
        0.10, 0.50, 0.20,
        0.09, 0.40, 0.20,
        0.3, 0.6,
        0.12, 10.0, 0.0, 1.0,
        0.1, 0.3, 0.25, 0.75,
        0.10, 0.20, 0.05,
        0.50, 1.00, 0.25,
        0.0, 1.0, 2.0 / 3.0,
        46 / 63, 0.0, 18 / 63,
        0.0, 0.1, 0.0,
        1.0, 0.0, 0.0, 1.0, 1.0, 0.0,
        0.8,
    ]
    assert obs.dtype == torch.float32
    assert obs.tolist() == pytest.approx(expected, rel=1e-6)


def test_offered_load_is_clipped(spec: TenantSpec):
    obs = build(ObservationLayout(spec), metrics(offered_mbps=[1000.0, 50.0, 20.0]))
    names = ObservationLayout(spec).names
    assert obs[names.index("class_offered[game]")].item() == LOAD_CLIP


def test_idle_entity_has_zero_loss(spec: TenantSpec):
    """An entity offering nothing reports loss 0, not NaN."""
    obs = build(ObservationLayout(spec), metrics(offered_mbps=[0.0, 50.0, 0.0], loss=[1.0, 0.2, 1.0]))
    assert obs[2].item() == 0.0 and torch.isfinite(obs).all()


def test_batched_metrics_give_batched_observations(spec: TenantSpec):
    m = ClassMetrics(*(x.expand(4, 2, 3) for x in metrics()))
    host = HostMetrics(HOST.cpu.expand(4, 2, 1), HOST.memory.expand(4, 2, 1))
    paths = PathMetrics(*(x.expand(4, 2, 2) for x in PATHS))
    plan = type(plan_tensors(PLAN))(*(x.expand(4, 2, 3) for x in plan_tensors(PLAN)))
    obs = ObservationLayout(spec).build(m, host, paths, plan)
    assert obs.shape == (4, 2, 48)
    assert torch.equal(obs[3, 1], build(ObservationLayout(spec), metrics()))


def test_a_tenant_that_delivers_nothing_has_zero_path_shares(spec: TenantSpec):
    layout = ObservationLayout(spec)
    idle = PathMetrics(PATHS.delay_ms, PATHS.loss, torch.zeros(2))
    obs = layout.build(metrics(), HOST, idle, plan_tensors(PLAN))
    share = [layout.names.index(f"path_share[{p}]") for p in ("eth0", "eth1")]
    assert obs[share].tolist() == [0.0, 0.0] and bool(torch.isfinite(obs).all())
