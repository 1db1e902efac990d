"""Measured state of a tenant over one control interval, from the simulator or the kernel monitor."""

from __future__ import annotations

from typing import NamedTuple

import torch


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
