"""Reward: weighted throughput, latency and bandwidth efficiency, minus a penalty per SLA violation."""

from __future__ import annotations

from typing import NamedTuple

import torch

from shaping.config import RewardConfig
from shaping.spec.metrics import ClassMetrics
from shaping.spec.tenant import TenantSpec

#: A class is not owed its minimum throughput beyond this fraction of what it demands.
MIN_RATE_SLACK = 0.95


class QoSTensors(NamedTuple):
    """QoS requirements as tensors of shape (..., C); absent requirements are neutral values."""

    max_p99_ms: torch.Tensor  # +inf when absent
    min_mbps: torch.Tensor  # 0 when absent
    max_loss: torch.Tensor  # +inf when absent
    app_floor: torch.Tensor  # -inf when absent
    has_sla: torch.Tensor  # bool: any requirement
    valid: torch.Tensor  # bool: a real class (False for padding)


def qos_tensors(specs: list[TenantSpec], n_classes: int, device: torch.device | str = "cpu") -> QoSTensors:
    """Stack the tenants' QoS requirements into (K, n_classes) tensors, padding with neutral values."""
    k = len(specs)
    inf = float("inf")
    t = {
        "max_p99_ms": torch.full((k, n_classes), inf),
        "min_mbps": torch.zeros(k, n_classes),
        "max_loss": torch.full((k, n_classes), inf),
        "app_floor": torch.full((k, n_classes), -inf),
        "has_sla": torch.zeros(k, n_classes, dtype=torch.bool),
        "valid": torch.zeros(k, n_classes, dtype=torch.bool),
    }
    for i, spec in enumerate(specs):
        for c, tc in enumerate(spec.classes):
            q = tc.qos
            if q.max_p99_ms is not None:
                t["max_p99_ms"][i, c] = q.max_p99_ms
            if q.min_mbps is not None:
                t["min_mbps"][i, c] = q.min_mbps
            if q.max_loss is not None:
                t["max_loss"][i, c] = q.max_loss
            if q.app_floor is not None:
                t["app_floor"][i, c] = q.app_floor
            t["has_sla"][i, c] = q.any
            t["valid"][i, c] = True
    return QoSTensors(**{name: x.to(device) for name, x in t.items()})


def sla_violations(m: ClassMetrics, q: QoSTensors) -> torch.Tensor:
    """Boolean (..., C): the class violates any clause of its SLA this interval.

    The minimum throughput is owed only up to MIN_RATE_SLACK of what the application demands,
    so a class that asks for less than its SLA minimum is not counted as violated; a class that
    demands nothing (its tenant is absent, or a scheduled lull) violates nothing.
    """
    owed = torch.minimum(q.min_mbps, MIN_RATE_SLACK * m.demand_mbps)
    bad = (
        (m.delay_p99_ms > q.max_p99_ms)
        | (m.delivered_mbps < owed)
        | (m.loss > q.max_loss)
        | (m.app_metric < q.app_floor)
    )
    return bad & q.has_sla & q.valid & (m.demand_mbps > 0)


class RewardTerms(NamedTuple):
    """Reward and its terms, each of shape (...,) (one value per tenant)."""

    reward: torch.Tensor
    throughput: torch.Tensor
    latency: torch.Tensor
    efficiency: torch.Tensor
    violations: torch.Tensor


def compute_reward(
    m: ClassMetrics, q: QoSTensors, cap_mbps: torch.Tensor, weights: RewardConfig
) -> RewardTerms:
    """Reward of each tenant from its class metrics (..., C).

    Terms, each in [0, 1] before weighting:
    - throughput: mean over classes of delivered / demanded rate;
    - latency: mean over classes of base delay / p99 delay (1 when nothing queues);
    - efficiency: delivered / min(cap, total demand), the share of usable bandwidth used;
    - violations: number of classes violating their SLA (penalized per violation).

    Args:
        m: metrics with (..., C) fields.
        q: QoS tensors broadcastable to the metrics.
        cap_mbps: the tenants' caps, broadcastable to (...,).
        weights: reward weights.
    """
    valid = q.valid.to(m.offered_mbps.dtype)
    n = valid.sum(-1).clamp_min(1.0)
    tput = ((m.delivered_mbps / m.demand_mbps.clamp_min(1e-6)).clamp(0.0, 1.0) * valid).sum(-1) / n
    lat = ((m.base_delay_ms / m.delay_p99_ms.clamp_min(1e-6)).clamp(0.0, 1.0) * valid).sum(-1) / n
    usable = torch.minimum(cap_mbps, (m.demand_mbps * valid).sum(-1)).clamp_min(1e-6)
    eff = ((m.delivered_mbps * valid).sum(-1) / usable).clamp(0.0, 1.0)
    viol = sla_violations(m, q).sum(-1).to(m.offered_mbps.dtype)
    reward = (
        weights.throughput * tput
        + weights.latency * lat
        + weights.efficiency * eff
        - weights.sla_penalty * viol
    )
    return RewardTerms(reward, tput, lat, eff, viol)
