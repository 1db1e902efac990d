"""Reward terms and SLA violations, computed by hand on a three-class tenant."""

from __future__ import annotations

import pytest
import torch

from shaping.config import RewardConfig
from shaping.spec import (
    ClassMetrics,
    QoSTensors,
    TenantSpec,
    compute_reward,
    qos_tensors,
    sla_violations,
    tenant_spec,
)
from shaping.spec.reward import MIN_RATE_SLACK
from tests.spec.conftest import class_metrics

CAP = torch.tensor([100.0])


BASE = {
    "offered_mbps": [10.0, 40.0, 20.0],
    "delivered_mbps": [9.0, 40.0, 20.0],
    "demand_mbps": [10.0, 100.0, 20.0],
    "loss": [0.02, 0.0, 0.0],
    "delay_mean_ms": [15.0, 30.0, 25.0],
    "delay_p99_ms": [20.0, 50.0, 25.0],
    "base_delay_ms": [10.0, 10.0, 25.0],
    "app_metric": [0.9, 0.4, 0.5],
}


def metrics(**over: list[float]) -> ClassMetrics:
    """game, backup, site: demand 10/100/20, delivered 9/40/20, p99 20/50/25 over base 10/10/25."""
    return class_metrics(BASE, **over)


def tenant_qos(spec: TenantSpec, n_classes: int = 3) -> QoSTensors:
    """The tenant's QoS tensors as (C,) rows, to match unbatched metrics."""
    return QoSTensors(*(x[0] for x in qos_tensors([spec], n_classes)))


def test_qos_tensors_use_neutral_values(spec: TenantSpec):
    q = qos_tensors([spec], 4)
    inf = float("inf")
    assert q.max_p99_ms.tolist() == [[40.0, inf, inf, inf]]
    assert q.min_mbps.tolist() == [[0.0, 10.0, 0.0, 0.0]]
    assert q.max_loss.tolist() == [[pytest.approx(0.01), inf, inf, inf]]
    assert q.app_floor.tolist() == [[-inf] * 4]
    assert q.has_sla.tolist() == [[True, True, False, False]]
    assert q.valid.tolist() == [[True, True, True, False]]


def test_reward_terms_by_hand(spec: TenantSpec):
    """throughput (0.9 + 0.4 + 1) / 3; latency (10/20 + 10/50 + 25/25) / 3; efficiency 69 / min(100, 130);
    one violation (game loses 2% > 1%; backup's 40 >= 10 Mbit/s; site has no SLA)."""
    q = tenant_qos(spec)
    terms = compute_reward(metrics(), q, CAP, RewardConfig())
    tput, lat, eff = 2.3 / 3, 1.7 / 3, 0.69
    assert terms.throughput.item() == pytest.approx(tput)
    assert terms.latency.item() == pytest.approx(lat)
    assert terms.efficiency.item() == pytest.approx(eff)
    assert terms.violations.item() == 1.0
    assert terms.reward.item() == pytest.approx(tput + lat + 0.5 * eff - 1.0)
    w = RewardConfig(throughput=2.0, latency=0.5, efficiency=1.0, sla_penalty=3.0)
    assert compute_reward(metrics(), q, CAP, w).reward.item() == pytest.approx(2 * tput + 0.5 * lat + eff - 3.0)


def test_padding_classes_do_not_count(spec: TenantSpec):
    """A fourth, padding column with awful numbers changes nothing."""
    pad = {k: [*v.tolist(), 1e6 if k == "delay_p99_ms" else 0.0] for k, v in metrics()._asdict().items()}
    padded = compute_reward(ClassMetrics(**{k: torch.tensor(v) for k, v in pad.items()}), tenant_qos(spec, 4), CAP,
                            RewardConfig())
    plain = compute_reward(metrics(), tenant_qos(spec), CAP, RewardConfig())
    for a, b in zip(padded, plain, strict=True):
        assert a.item() == pytest.approx(b.item())


def test_efficiency_uses_the_smaller_of_cap_and_demand(spec: TenantSpec):
    """Demand 5 + 10 + 5 = 20 below the 100 Mbit/s cap: delivering 18 is 90% efficient."""
    m = metrics(demand_mbps=[5.0, 10.0, 5.0], delivered_mbps=[5.0, 8.0, 5.0])
    assert compute_reward(m, tenant_qos(spec), CAP, RewardConfig()).efficiency.item() == pytest.approx(0.9)


def test_batched_tenants(spec: TenantSpec):
    """(B, K, C) metrics give (B, K) terms equal to the unbatched ones."""
    m = ClassMetrics(*(x.expand(2, 3, 3) for x in metrics()))
    q = qos_tensors([spec] * 3, 3)
    terms = compute_reward(m, q, CAP.expand(3), RewardConfig())
    assert terms.reward.shape == (2, 3)
    assert torch.allclose(terms.reward, compute_reward(metrics(), tenant_qos(spec), CAP, RewardConfig()).reward)


def violated(spec: TenantSpec, **over: list[float]) -> list[bool]:
    return sla_violations(metrics(**over), tenant_qos(spec)).tolist()


def test_no_violation_when_every_clause_holds(spec: TenantSpec):
    assert violated(spec, loss=[0.01, 0.0, 0.0]) == [False, False, False]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"delay_p99_ms": [40.1, 50.0, 25.0]}, [True, False, False]),  # p99 above 40 ms
        ({"delay_p99_ms": [40.0, 50.0, 25.0]}, [False, False, False]),  # at the bound is fine
        ({"loss": [0.011, 0.0, 0.0]}, [True, False, False]),  # loss above 1%
        ({"delivered_mbps": [10.0, 9.9, 20.0]}, [False, True, False]),  # below 10 Mbit/s
        # asking for 5 Mbit/s, backup is owed only 0.95 * 5 = 4.75 of its 10 Mbit/s minimum
        ({"demand_mbps": [10.0, 5.0, 20.0], "delivered_mbps": [10.0, 4.8, 20.0]}, [False, False, False]),
        ({"demand_mbps": [10.0, 5.0, 20.0], "delivered_mbps": [10.0, 4.7, 20.0]}, [False, True, False]),
        # site has no SLA: nothing it measures is a violation
        ({"delay_p99_ms": [20.0, 50.0, 1e6], "app_metric": [0.9, 0.4, 0.0]}, [False, False, False]),
    ],
)
def test_each_clause(spec: TenantSpec, over: dict[str, list[float]], expected: list[bool]):
    assert MIN_RATE_SLACK == 0.95
    assert violated(spec, **{"loss": [0.0, 0.0, 0.0], **over}) == expected


def test_app_floor_clause(scenario):
    scenario.tenants[0].classes[2].qos.app_floor = 0.6
    q = tenant_qos(tenant_spec(scenario, 0))
    assert sla_violations(metrics(loss=[0.0] * 3, app_metric=[0.9, 0.4, 0.59]), q).tolist() == [False, False, True]
    assert sla_violations(metrics(loss=[0.0] * 3, app_metric=[0.9, 0.4, 0.6]), q).tolist() == [False, False, False]
