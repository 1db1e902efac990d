"""ObservationLayout: size, labels and the values of every block on hand-made metrics."""

from __future__ import annotations

import pytest
import torch

from shaping.spec import ClassMetrics, HostMetrics, ObservationLayout, TenantSpec
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


def test_size_and_labels(spec: TenantSpec):
    layout = ObservationLayout(spec)
    # 2 entities, 3 classes, 1 VM: 2 * 2 + 4 * 3 + 2 * 1.
    assert layout.size == 18
    assert layout.names == [
        "entity_util[web-vm]", "entity_util[net]", "entity_loss[web-vm]", "entity_loss[net]",
        "class_rtt[game]", "class_rtt[backup]", "class_rtt[site]",
        "class_app[game]", "class_app[backup]", "class_app[site]",
        "class_offered[game]", "class_offered[backup]", "class_offered[site]",
        "class_delivered[game]", "class_delivered[backup]", "class_delivered[site]",
        "vm_cpu[web-vm]", "vm_memory[web-vm]",
    ]


def test_values_by_hand(spec: TenantSpec):
    """web-vm carries game and site: util (9 + 20) / 100, loss (10 * 0.1 + 0) / 30; net carries backup:
    util 40 / 100, loss 0.2. RTT: game 20 / its 40 ms SLA, backup 500 / RTT_SCALE_MS, site 2000 / 100
    clipped to RTT_CLIP. Offered and delivered over the 100 Mbit/s cap."""
    assert RTT_SCALE_MS == 100.0 and RTT_CLIP == 10.0
    obs = ObservationLayout(spec).build(metrics(), HOST)
    expected = [
        0.29, 0.40, 1.0 / 30.0, 0.2,
        0.5, 5.0, 10.0,
        0.9, 0.4, 0.5,
        0.10, 0.50, 0.20,
        0.09, 0.40, 0.20,
        0.3, 0.6,
    ]
    assert obs.dtype == torch.float32
    assert obs.tolist() == pytest.approx(expected, rel=1e-6)


def test_offered_load_is_clipped(spec: TenantSpec):
    obs = ObservationLayout(spec).build(metrics(offered_mbps=[1000.0, 50.0, 20.0]), HOST)
    names = ObservationLayout(spec).names
    assert obs[names.index("class_offered[game]")].item() == LOAD_CLIP


def test_idle_entity_has_zero_loss(spec: TenantSpec):
    """An entity offering nothing reports loss 0, not NaN."""
    obs = ObservationLayout(spec).build(metrics(offered_mbps=[0.0, 50.0, 0.0], loss=[1.0, 0.2, 1.0]), HOST)
    assert obs[2].item() == 0.0 and torch.isfinite(obs).all()


def test_batched_metrics_give_batched_observations(spec: TenantSpec):
    m = ClassMetrics(*(x.expand(4, 2, 3) for x in metrics()))
    host = HostMetrics(HOST.cpu.expand(4, 2, 1), HOST.memory.expand(4, 2, 1))
    obs = ObservationLayout(spec).build(m, host)
    assert obs.shape == (4, 2, 18)
    assert torch.equal(obs[3, 1], ObservationLayout(spec).build(metrics(), HOST))
