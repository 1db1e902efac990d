"""Bulk TCP in the simulator: it fills whatever buffer it is given (bufferbloat), backs off on loss to
the Misra-Gong-Towsley equilibrium, and CoDel holds its sojourn near the 5 ms target.

Each test states its tolerance; the one 30 s simulated run comes from experiments.validate_sim.check_tcp.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from experiments import sim_checks as C
from experiments import validate_sim as V
from shaping.sim.layout import LEAF_LIMIT_PACKETS
from shaping.sim.simulator import CODEL_TARGET_MS
from shaping.traffic.apps import MSS_BYTES, tcp_window_update

MSS_KBIT = MSS_BYTES * 8.0 / 1000.0


@pytest.fixture(scope="module")
def tcp() -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in V.check_tcp()}


def test_window_update_by_hand():
    """One Euler step of dW/dt = N/R - W^2 p / (2 N R) (packets), N = 2, R = 50 ms, dt = 10 ms:
    W = 100, p = 0.01: +0.4 - 5 = 95.4 packets. p = 1 would remove 500: capped at halving, 50.4.
    Never below 2 packets per flow, never above max_kbit. Tolerance 1e-5 relative."""
    w = torch.tensor([100.0 * MSS_KBIT])
    flows, rtt = torch.tensor([2.0]), torch.tensor([50.0])
    big = torch.tensor([1e9])
    assert tcp_window_update(w, flows, rtt, torch.tensor([0.01]), 10.0, big).item() / MSS_KBIT == pytest.approx(95.4)
    assert tcp_window_update(w, flows, rtt, torch.tensor([1.0]), 10.0, big).item() / MSS_KBIT == pytest.approx(50.4)
    tiny = torch.tensor([0.5 * MSS_KBIT])
    assert tcp_window_update(tiny, flows, rtt, torch.tensor([1.0]), 10.0, big).item() / MSS_KBIT == pytest.approx(4.0)
    assert tcp_window_update(w, flows, rtt, torch.tensor([0.0]), 10.0, torch.tensor([10.0])).item() == 10.0


def test_bulk_fills_the_provider_buffer(tcp):
    """4 flows into a 100 Mbit/s path with a 100 ms buffer (tenant root 100 Gbit/s): the path stays full
    (>= 99.9% delivered) and the queue sits near the full buffer: mean sojourn >= 90 ms, never above
    100 ms + 1%. It does back off: overflow losses occur (loss > 0) and the sojourn saws (max - min > 1 ms)."""
    r = tcp["bloat_provider"]
    assert r["delivered_mbps"] >= 0.999 * 100.0
    assert 90.0 <= r["sojourn_mean_ms"] and r["sojourn_max_ms"] <= 101.0
    assert r["loss"] > 0.0 and r["sojourn_max_ms"] - r["sojourn_min_ms"] > 1.0


def test_bulk_fills_the_tenant_leaf(tcp):
    """Same at the tenant's own HTB root (100 Mbit/s, leaf of 1000 packets = 1000 x 11.584 kbit =
    115.8 ms): mean sojourn >= 90% of 115.8 ms, never above it + 1%."""
    r = tcp["bloat_leaf"]
    leaf_ms = LEAF_LIMIT_PACKETS * MSS_KBIT / 100.0
    assert r["delivered_mbps"] >= 0.999 * 100.0
    assert 0.9 * leaf_ms <= r["sojourn_mean_ms"] and r["sojourn_max_ms"] <= 1.01 * leaf_ms


@pytest.mark.parametrize("name", ["loss_0.01", "loss_0.001"])
def test_random_loss_gives_the_fluid_aimd_equilibrium(tcp, name: str):
    """With random loss p on an uncongested path (RTT = 2 x 10 ms), dW/dt = 0 at W = N sqrt(2 / p):
    rate = N x MSS / RTT x sqrt(2/p) = 4 x 11.584 / 20 x sqrt(200) = 32.8 Mbit/s at p = 1%, and
    103.6 at 0.1%. Tolerance 1%. (Mathis et al.'s Reno formula has sqrt(3/2) for sqrt(2), 13% lower.)"""
    r = tcp[name]
    expected = 4 * MSS_KBIT / (2 * C.BASE_MS) * math.sqrt(2.0 / r["drop"])
    assert r["offered_mbps"] == pytest.approx(expected, rel=0.01)
    assert r["loss"] == pytest.approx(r["drop"], rel=1e-4)
    assert r["delivered_mbps"] == pytest.approx(expected * (1 - r["drop"]), rel=0.01)


def test_rate_scales_as_inverse_sqrt_loss(tcp):
    """Ten times the loss, sqrt(10) = 3.16 times less rate. Tolerance 1%."""
    ratio = tcp["loss_0.001"]["offered_mbps"] / tcp["loss_0.01"]["offered_mbps"]
    assert ratio == pytest.approx(math.sqrt(10.0), rel=0.01)


@pytest.mark.parametrize("name", ["codel_1", "codel_4", "codel_16"])
def test_codel_holds_the_sojourn_near_target(tcp, name: str):
    """CoDel (target 5 ms, interval 100 ms) on the same 115.8 ms leaf with 1, 4 and 16 flows: mean sojourn
    within [0.5, 2] x target, 95th percentile of per-interval means below 3 x target, at least 10x below
    the no-AQM leaf, with the link still >= 99% used."""
    r = tcp[name]
    assert 0.5 * CODEL_TARGET_MS <= r["sojourn_mean_ms"] <= 2.0 * CODEL_TARGET_MS
    assert r["sojourn_p95_ms"] <= 3.0 * CODEL_TARGET_MS
    assert r["sojourn_mean_ms"] * 10.0 <= tcp["bloat_leaf"]["sojourn_mean_ms"]
    assert r["delivered_mbps"] >= 0.99 * 100.0
