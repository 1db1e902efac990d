"""Application models: packet sizes, burstiness, elasticity and the application metric of each app.

Assumptions, per application (each a deliberate simplification; see docs/simulator.md):

- gaming: UDP state updates at 60 Hz per player, ~120-byte packets, near-constant bit rate.
  The client renders a frame on time when the update it waits for arrives within the frame
  budget (the class's latency SLA, 50 ms without one) and is not lost, so
  FPS/60 = (1 - loss) * P(delay <= budget). Latency, jitter (the delay spread) and loss all
  lower it.
- transactions: request/response with a deadline, Poisson arrivals of ~400-byte messages; a
  transaction completes when both request and response survive and the delay fits the deadline:
  completion = (1 - loss)^2 * P(delay <= deadline).
- video: adaptive bitrate over TCP with a bitrate ladder; the player picks the highest rung
  below 90% of its throughput estimate and keeps a playout buffer; QoE = (bitrate / best rung
  the stream's peak rate allows) * (1 - rebuffering fraction). Segments are fetched as fast as the
  TCP window allows (the same fluid model as bulk) while the buffer is below target, and paced at
  the bitrate once it is full.
- bulk: backup over long-lived TCP flows, elastic: the aggregate window follows the fluid
  AIMD model of Misra, Gong and Towsley (2000), so it fills any buffer it is given (the
  bufferbloat that shaping is for) and backs off on loss; metric = goodput / demand.
- web: bursty, heavy-tailed aggregate of page loads (Pareto load multiplier with alpha 1.5 per
  control interval); metric = fraction of objects delivered within 300 ms (or the SLA).

Delay tails use the exponential tail of M/G/1 waiting times: P(delay > d) = exp(-(d - fixed) / W)
with W the mean packet-scale waiting time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from shaping.config import APPS

GAMING, TRANSACTIONS, VIDEO, BULK, WEB = range(len(APPS))

#: Packet size (bytes), squared coefficient of variation of the size, default deadline (ms),
#: CPU cost per Mbit/s on one vCPU, memory per flow (GiB).
_APP_TABLE: dict[str, tuple[float, float, float, float, float]] = {
    "gaming": (120.0, 0.05, 50.0, 0.05, 0.02),
    "transactions": (400.0, 0.5, 100.0, 0.03, 0.01),
    "video": (1400.0, 0.1, 1000.0, 0.004, 0.01),
    "bulk": (1448.0, 0.05, 1000.0, 0.003, 0.05),
    "web": (1000.0, 1.0, 300.0, 0.02, 0.005),
}

#: Video bitrate ladder per stream, Mbit/s.
VIDEO_LADDER_MBPS: tuple[float, ...] = (0.75, 1.5, 3.0, 5.0, 8.0)
#: Playout buffer the player aims for, seconds.
VIDEO_TARGET_BUFFER_S = 10.0
#: TCP segment size, bytes.
MSS_BYTES = 1448.0
#: Pareto shape of the web load multiplier (finite mean, infinite variance).
WEB_PARETO_ALPHA = 1.5
#: Cap on the web multiplier, so one sample cannot exceed this many times the mean.
WEB_MULT_CAP = 8.0
#: ln(100): the 99th percentile of an exponential tail in units of its mean.
LN100 = math.log(100.0)


class AppParams(NamedTuple):
    """Per-class application parameters as tensors of shape (K, C)."""

    app: torch.Tensor  # int64 app code
    pkt_kbit: torch.Tensor
    size_cs2: torch.Tensor
    deadline_ms: torch.Tensor
    cpu_per_mbps: torch.Tensor
    mem_per_flow_gib: torch.Tensor


def app_code(app: str) -> int:
    """Integer code of an application name."""
    return APPS.index(app)


def app_row(app: str) -> tuple[float, float, float, float, float]:
    """(packet bytes, size cs^2, deadline ms, cpu per Mbit/s, GiB per flow) of an application."""
    return _APP_TABLE[app]


def on_time_prob(deadline_ms: torch.Tensor, fixed_ms: torch.Tensor, wait_ms: torch.Tensor) -> torch.Tensor:
    """P(delay <= deadline) for delay = fixed + Exp(mean wait)."""
    slack = (deadline_ms - fixed_ms).clamp_min(0.0)
    return 1.0 - torch.exp(-slack / wait_ms.clamp_min(1e-3))


def per_step_metric(
    app: torch.Tensor, on_time: torch.Tensor, loss: torch.Tensor, goodput_ratio: torch.Tensor
) -> torch.Tensor:
    """Instantaneous application metric of open-loop and bulk classes (video is set elsewhere)."""
    keep = 1.0 - loss
    timely = on_time * keep
    metric = torch.where(app == TRANSACTIONS, on_time * keep * keep, timely)
    return torch.where(app == BULK, goodput_ratio.clamp(0.0, 1.0), metric)


def tcp_window_update(
    window_kbit: torch.Tensor,
    flows: torch.Tensor,
    rtt_ms: torch.Tensor,
    loss_prob: torch.Tensor,
    dt_ms: float,
    max_kbit: torch.Tensor,
) -> torch.Tensor:
    """One explicit-Euler step of the aggregate TCP window of N flows (Misra et al. fluid model).

    dW/dt = N/R - W^2 p / (2 N R) in packets; the decrease is capped at halving per step,
    which is what one loss event does to a Reno window.
    """
    mss = MSS_BYTES * 8.0 / 1000.0
    w = window_kbit / mss
    grow = flows / rtt_ms * dt_ms
    shrink = torch.minimum(w * w * loss_prob / (2.0 * flows * rtt_ms) * dt_ms, 0.5 * w)
    w = (w + grow - shrink).clamp_min(2.0 * flows)
    return torch.minimum(w * mss, max_kbit)


def video_level(throughput_mbps: torch.Tensor, streams: torch.Tensor, ladder: torch.Tensor) -> torch.Tensor:
    """Highest ladder rung whose total bitrate fits in 90% of the throughput estimate."""
    per_stream = 0.9 * throughput_mbps / streams
    fits = ladder <= per_stream.unsqueeze(-1)
    return (fits.sum(-1) - 1).clamp_min(0)
