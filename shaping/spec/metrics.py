"""Measured state of a tenant over one control interval, from the simulator or the kernel monitor."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from shaping.spec.plan import PlanBatch
    from shaping.spec.tenant import TenantSpec


class ClassMetrics(NamedTuple):
    """Per-class measurements over one control interval; every field has shape (..., C).

    The simulator fills it for a batch of environments and tenants, (B, K, C); the kernel
    monitor fills it for one tenant, (C,). Both feed the same observation and reward code.
    """

    offered_mbps: torch.Tensor
    """Rate the application sent (before any drop)."""
    delivered_mbps: torch.Tensor
    """Rate delivered at the far end of the path."""
    demand_mbps: torch.Tensor
    """Rate the application wanted (its peak for elastic applications)."""
    loss: torch.Tensor
    """Lost fraction of the offered bytes, in [0, 1]."""
    delay_mean_ms: torch.Tensor
    """Mean one-way delay, milliseconds."""
    delay_p99_ms: torch.Tensor
    """99th-percentile one-way delay estimate, milliseconds."""
    base_delay_ms: torch.Tensor
    """One-way delay of the class's path without queueing, milliseconds."""
    app_metric: torch.Tensor
    """Application metric in [0, 1]: FPS/60, completion rate, video QoE, goodput ratio, page loads on time."""


class HostMetrics(NamedTuple):
    """CPU and memory utilization of a tenant's VMs, each of shape (..., V), in [0, 1]."""

    cpu: torch.Tensor
    memory: torch.Tensor


class PathMetrics(NamedTuple):
    """What one tenant measures per provider path over one control interval; every field (..., P).

    The simulator fills it from its queues; the kernel monitor from per-path probes and the tenant's own
    counters. Both feed the same observation.
    """

    delay_ms: torch.Tensor
    """One-way delay of a probe on the path: base delay, added delay and the path's queued work."""
    loss: torch.Tensor
    """Fraction of a probe's packets lost on the path, in [0, 1] (1: the path is down)."""
    delivered_mbps: torch.Tensor
    """The tenant's own traffic delivered over the path."""


def paths_from_classes(spec: TenantSpec, metrics: ClassMetrics, plan: PlanBatch) -> PathMetrics:
    """PathMetrics (P,) of one interval from the class metrics (C,) and the plan in force (fields (C,)).

    Where nothing probes the paths (a kernel backend without per-path probes), the tenant's own classes
    are the probes: a path's delivered rate is the sum over the classes the plan puts on it, its delay
    their delivered-weighted mean delay, its loss their offered-weighted loss; a path that carries none
    of them shows its published base delay and no loss.
    """
    n_paths = len(spec.paths)
    one_hot = torch.nn.functional.one_hot(plan.path.long().clamp(0, n_paths - 1), n_paths).float()  # (C, P)
    delivered = metrics.delivered_mbps @ one_hot
    offered = metrics.offered_mbps @ one_hot
    lost = (metrics.offered_mbps * metrics.loss) @ one_hot
    weighted_delay = (metrics.delay_mean_ms * metrics.delivered_mbps) @ one_hot
    published = torch.tensor(spec.path_delay_ms or (0.0,) * n_paths, dtype=torch.float32)
    delay = torch.where(delivered > 1e-9, weighted_delay / delivered.clamp_min(1e-9), published)
    loss = torch.where(offered > 1e-9, lost / offered.clamp_min(1e-9), torch.zeros_like(offered))
    return PathMetrics(delay, loss.clamp(0.0, 1.0), delivered)
