"""One fluid sub-step of the two queueing stages: each tenant's HTB egress and the provider paths.

Volumes are in kbit, rates in Mbit/s and times in ms, so volume / rate is a delay in ms.
Within a sub-step traffic is a fluid; packet-scale queueing on top of the fluid backlog uses
M/G/1 results (Pollaczek-Khinchine, and Cobham's formula for non-preemptive priorities).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from shaping.sim.layout import N_QUEUES

_EPS = 1e-9
#: Highest utilization used in the M/G/1 formulas (they diverge at 1; a saturated queue is
#: described by its fluid backlog instead).
RHO_MAX = 0.98
#: Longest delay reported for a starved queue, ms.
MAX_DELAY_MS = 10_000.0


class TenantStage(NamedTuple):
    """Result of a tenant HTB sub-step, each (B, K, C)."""

    served: torch.Tensor
    backlog: torch.Tensor
    overflow: torch.Tensor
    fluid_delay_ms: torch.Tensor


def htb_stage(
    backlog: torch.Tensor,
    arrivals: torch.Tensor,
    rate_kbit: torch.Tensor,
    ceil_kbit: torch.Tensor,
    cap_kbit: torch.Tensor,
    higher: torch.Tensor,
    same: torch.Tensor,
    limit_kbit: torch.Tensor,
    dt_ms: float,
) -> TenantStage:
    """Serve each tenant's classes like HTB: guaranteed rates, then borrowing by priority up to ceil.

    Args:
        backlog, arrivals: (B, K, C) volumes queued and arriving this sub-step.
        rate_kbit, ceil_kbit: (B, K, C) volumes each class may send at its rate and ceil.
        cap_kbit: (B, K, 1) or (K, 1) volume of the tenant's root class.
        higher: (B, K, C, C) float mask, [c', c] = 1 when c' has strictly higher priority than c.
        same: (B, K, C, C) float mask, [c', c] = 1 when c' has the same priority as c.
        limit_kbit: (K, C) leaf queue limits; the excess is dropped (tail drop).
        dt_ms: sub-step length.
    """
    demand = backlog + arrivals
    guaranteed = torch.minimum(demand, rate_kbit)
    # Rates that oversubscribe the root are scaled down to fit it.
    total = guaranteed.sum(-1, keepdim=True)
    guaranteed = guaranteed * (cap_kbit / total.clamp_min(_EPS)).clamp(max=1.0)
    excess = torch.minimum(demand - guaranteed, (ceil_kbit - rate_kbit).clamp_min(0.0))
    spare = (cap_kbit - guaranteed.sum(-1, keepdim=True)).clamp_min(0.0)
    ex = excess.unsqueeze(-2)
    before = (ex @ higher).squeeze(-2)  # excess demand of strictly higher priorities
    level = (ex @ same).squeeze(-2)  # excess demand of the class's own priority level
    share = ((spare - before).clamp_min(0.0) / level.clamp_min(_EPS)).clamp(max=1.0)
    served = guaranteed + excess * share
    left = demand - served
    overflow = (left - limit_kbit).clamp_min(0.0)
    left = left - overflow
    delay = (left * dt_ms / served.clamp_min(_EPS)).clamp(max=MAX_DELAY_MS)
    return TenantStage(served, left, overflow, delay)


def wfq_serve(demand: torch.Tensor, budget: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted fair (work-conserving) service of Q queues: water-filling in Q passes.

    Args:
        demand: (..., Q) volumes waiting.
        budget: (...) volume that can be served.
        weights: (..., Q) positive weights, broadcastable to demand.
    """
    served = torch.zeros_like(demand)
    left = budget
    active = torch.ones_like(demand)
    for _ in range(demand.shape[-1]):
        w = weights * active
        share = left.unsqueeze(-1) * w / w.sum(-1, keepdim=True).clamp_min(_EPS)
        add = torch.minimum(demand - served, share)
        served = served + add
        left = (left - add.sum(-1)).clamp_min(0.0)
        active = (demand - served > _EPS).to(demand.dtype)
    return served


class ProviderStage(NamedTuple):
    """Result of a provider sub-step, each (B, K, C)."""

    delivered: torch.Tensor
    backlog: torch.Tensor
    policed: torch.Tensor
    overflow: torch.Tensor
    fluid_delay_ms: torch.Tensor
    queue_util: torch.Tensor  # (B, P * N_QUEUES) served / capacity of each queue's path


def provider_stage(
    backlog: torch.Tensor,
    arrivals: torch.Tensor,
    queue_index: torch.Tensor,
    path_kbit: torch.Tensor,
    ef_limit_kbit: torch.Tensor,
    buffer_kbit: torch.Tensor,
    af_weights: torch.Tensor,
    dt_ms: float,
) -> ProviderStage:
    """Serve the provider's DSCP queues on each path: EF strict (policed), then WFQ of AF-high, AF-low, BE.

    Args:
        backlog, arrivals: (B, K, C) each class's volume in, and arriving at, its provider queue.
        queue_index: (B, K * C) flat queue of each class: path * N_QUEUES + queue.
        path_kbit: (P,) volume each path serves per sub-step.
        ef_limit_kbit: (P,) EF volume admitted per sub-step; the rest is policed (dropped).
        buffer_kbit: (P,) buffer of each queue; the excess is dropped.
        af_weights: (P, 3) WFQ weights of AF-high, AF-low, best effort.
        dt_ms: sub-step length.
    """
    b = backlog.shape[0]
    shape = backlog.shape
    p = path_kbit.shape[0]
    x = arrivals.reshape(b, -1)
    q = backlog.reshape(b, -1)
    arr_q = torch.zeros(b, p * N_QUEUES, device=x.device, dtype=x.dtype).scatter_add_(1, queue_index, x)
    back_q = torch.zeros_like(arr_q).scatter_add_(1, queue_index, q)
    limit = torch.full((p, N_QUEUES), float("inf"), device=x.device, dtype=x.dtype)
    limit[:, 0] = ef_limit_kbit
    admit_q = (limit.view(1, -1) / arr_q.clamp_min(_EPS)).clamp(max=1.0)
    x_adm = x * admit_q.gather(1, queue_index)
    demand_q = (back_q + arr_q * admit_q).view(b, p, N_QUEUES)
    ef = torch.minimum(demand_q[..., 0], path_kbit)
    rest = wfq_serve(demand_q[..., 1:], path_kbit - ef, af_weights)
    served_q = torch.cat([ef.unsqueeze(-1), rest], dim=-1).view(b, -1)
    demand_q = demand_q.view(b, -1)
    frac = served_q / demand_q.clamp_min(_EPS)
    demand_c = q + x_adm
    delivered = demand_c * frac.gather(1, queue_index)
    left_c = demand_c - delivered
    left_q = demand_q - served_q
    buf = buffer_kbit.repeat_interleave(N_QUEUES).view(1, -1)
    over_frac = ((left_q - buf).clamp_min(0.0) / left_q.clamp_min(_EPS)).clamp(max=1.0)
    overflow = left_c * over_frac.gather(1, queue_index)
    left_c = left_c - overflow
    delay_q = (left_q * (1.0 - over_frac) * dt_ms / served_q.clamp_min(_EPS)).clamp(max=MAX_DELAY_MS)
    util = served_q / path_kbit.repeat_interleave(N_QUEUES).view(1, -1)
    return ProviderStage(
        delivered=delivered.view(shape),
        backlog=left_c.view(shape),
        policed=(x - x_adm).view(shape),
        overflow=overflow.view(shape),
        fluid_delay_ms=delay_q.gather(1, queue_index).view(shape),
        queue_util=util,
    )


def residual_work(
    served_kbit: torch.Tensor, pkt_kbit: torch.Tensor, cs2: torch.Tensor, link_kbit: torch.Tensor
) -> torch.Tensor:
    """Each class's share of the M/G/1 mean residual service time lambda * E[S^2] / 2, in sub-steps.

    With lambda = served / (pkt * dt) packets per ms and S = pkt / capacity,
    lambda * E[S^2] / 2 = served * pkt * (1 + cs2) / (2 * link_kbit * capacity), where
    link_kbit = capacity * dt, which is this value times dt; the caller sums it over the
    classes sharing a server and multiplies by dt (priority_wait_ms does).
    """
    return served_kbit * pkt_kbit * (1.0 + cs2) / (2.0 * link_kbit * link_kbit)


def priority_wait_ms(
    w0: torch.Tensor, rho_before: torch.Tensor, rho_through: torch.Tensor, dt_ms: float
) -> torch.Tensor:
    """Cobham's mean wait of a non-preemptive priority M/G/1 queue.

    W_k = W0 / ((1 - sigma_{k-1}) (1 - sigma_k)), with sigma the load of higher priorities
    (rho_before) and of higher priorities plus the class's own level (rho_through).
    With one level this is the Pollaczek-Khinchine mean wait rho * E[S] (1 + cs2) / (2 (1 - rho)).

    Args:
        w0: mean residual work in units of sub-steps (sum of residual_work), broadcastable.
        rho_before, rho_through: utilizations in [0, 1].
        dt_ms: sub-step length, converting w0 to ms.
    """
    a = 1.0 - rho_before.clamp(max=RHO_MAX)
    c = 1.0 - rho_through.clamp(max=RHO_MAX)
    return w0 * dt_ms / (a * c)
