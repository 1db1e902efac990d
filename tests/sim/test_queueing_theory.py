"""The simulator against queueing theory: M/M/1 and M/D/1 (Pollaczek-Khinchine), Cobham's priorities,
an independent packet-level Lindley simulation, Little's law and saturated FIFOs (bufferbloat).

Each test states its tolerance and derives its expectation by hand; the measurements come from
experiments.validate_sim and experiments.sim_checks, and ``python -m experiments.validate_sim`` prints
them for docs/simulator.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from experiments import sim_checks as C
from experiments import validate_sim as V
from experiments.packet_sim import lindley_fifo, priority_fifo
from shaping.sim import network
from shaping.traffic.apps import LN100


def pk_wait(rho: float, cs2: float) -> float:
    """Pollaczek-Khinchine mean wait in units of the mean service time: rho (1 + cs2) / (2 (1 - rho))."""
    return rho * (1.0 + cs2) / (2.0 * (1.0 - rho))


@pytest.fixture(scope="module")
def lindley() -> dict[tuple[float, float], dict[str, Any]]:
    return {(r["cs2"], r["rho"]): r for r in V.mg1_lindley()}


@pytest.fixture(scope="module")
def sim_rows() -> list[dict[str, Any]]:
    return V.check_mg1_simulator()


# ------------------------------------------------------------------ network functions
@pytest.mark.parametrize("row", V.mg1_functions(), ids=lambda r: f"cs2={r['cs2']}-rho={r['rho']}")
def test_functions_match_pollaczek_khinchine(row: dict[str, Any]):
    """M/D/1 (cs2 0): W = rho S / (2 (1 - rho)); M/M/1 (cs2 1): W = rho S / (1 - rho). Tolerance 1e-5
    relative (float32)."""
    assert row["wait_over_s"] == pytest.approx(pk_wait(row["rho"], row["cs2"]), rel=1e-5)


@pytest.mark.parametrize("row", V.mg1_functions(V.RHOS_SATURATING), ids=lambda r: f"cs2={r['cs2']}-rho={r['rho']}")
def test_functions_cap_the_wait_past_rho_max(row: dict[str, Any]):
    """Past RHO_MAX = 0.98 the wait stays at its rho = 0.98 value (the formula diverges; a saturated
    queue is the fluid backlog's business). At 0.95 it is still exact; at 0.99 it is the 0.98 value,
    about half the true one. Tolerance 1e-5 relative."""
    rho = min(row["rho"], network.RHO_MAX)
    # the load factor rho in the numerator is the real one; only 1 / (1 - rho) is capped
    expected = row["rho"] * (1.0 + row["cs2"]) / (2.0 * (1.0 - rho))
    assert row["wait_over_s"] == pytest.approx(expected, rel=1e-5)


def test_priority_wait_is_cobham():
    """Two classes on one link, loads 0.2 (high) and 0.6 (low), exponential 1000-byte packets:
    W0 = sum rho_i S (1 + cs2) / 2 = 0.8 S; high W0 / (1 - 0.2) = S, low W0 / (0.8 * 0.2) = 5 S.
    Tolerance 1e-5 relative."""
    import torch

    dt, link, pkt = 10.0, 1000.0, 8.0
    s = pkt / (link / dt)
    served = torch.tensor([0.2, 0.6]) * link
    w0 = network.residual_work(served, torch.tensor(pkt), torch.tensor(1.0), torch.tensor(link)).sum()
    wait = network.priority_wait_ms(w0, torch.tensor([0.0, 0.2]), torch.tensor([0.2, 0.8]), dt)
    assert (wait / s).tolist() == pytest.approx([1.0, 5.0], rel=1e-5)


# ------------------------------------------------------------------ the packet-level reference itself
@pytest.mark.parametrize("cs2", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("rho", V.RHOS)
def test_lindley_reference_agrees_with_theory(lindley, cs2: float, rho: float):
    """The numpy Lindley recursion (1M packets in 20 replications, 10% warm-up each) reproduces P-K:
    mean wait within 3% (5% at rho 0.9, where the sample mean's standard error is about 2%)."""
    tol = 0.05 if rho >= 0.9 else 0.03
    assert lindley[(cs2, rho)]["wait_over_s"] == pytest.approx(pk_wait(rho, cs2), rel=tol)


def test_lindley_mm1_tail_is_exponential(lindley):
    """M/M/1 sojourn is Exp(mu - lambda): p99 = ln(100) / (1 - rho) service times. Tolerance 4%."""
    for rho in V.RHOS:
        assert lindley[(1.0, rho)]["p99_sojourn_over_s"] == pytest.approx(LN100 / (1.0 - rho), rel=0.04)


def test_priority_reference_agrees_with_cobham():
    """The event-driven non-preemptive priority queue (200k packets) gives Cobham's S and 5 S for the
    two-class case of test_priority_wait_is_cobham. Tolerance 4%."""
    out = priority_fifo([0.2, 0.6], [1.0, 1.0], [1.0, 1.0], 200_000, np.random.default_rng(5))
    assert [q.wait.mean() for q in out] == pytest.approx([1.0, 5.0], rel=0.04)


def test_lindley_vectorization_matches_the_loop():
    """The vectorized reflected walk equals the literal recursion W_{n+1} = max(0, W_n + S_n - A_{n+1})."""
    rng = np.random.default_rng(3)
    q = lindley_fifo(0.8, 1.0, 1.0, 2000, 1, np.random.default_rng(3))
    gaps = rng.exponential(1.0 / 0.8, size=(1, 2000))[0]
    service = rng.exponential(1.0, size=(1, 2000))[0]
    w = [0.0]
    for n in range(1999):
        w.append(max(0.0, w[-1] + service[n] - gaps[n + 1]))
    np.testing.assert_allclose(q.wait[0], w, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ end to end through the Simulator
def expected_sojourn_ms(row: dict[str, Any]) -> float:
    """P-K sojourn S (1 + W/S) at the bottleneck (100 Mbit/s, rho) plus the other stage's at 100 Gbit/s."""
    s, rho, cs2 = row["service_ms"], row["rho"], row["cs2"]
    s_fat, rho_fat = s * 100.0 / C.FAT_MBPS, rho * 100.0 / C.FAT_MBPS
    return s * (1.0 + pk_wait(rho, cs2)) + s_fat * (1.0 + pk_wait(rho_fat, cs2))


def test_simulator_mean_sojourn_is_pollaczek_khinchine(sim_rows):
    """Web (M/M/1) at 0.3..0.9 and gaming (cs2 0.05) at 0.5 and 0.9 at a provider path, web at the tenant
    HTB root: mean delay minus base delay equals the P-K sojourn of both stages. Tolerance 0.1%."""
    for row in sim_rows:
        assert row["sojourn_ms"] == pytest.approx(expected_sojourn_ms(row), rel=1e-3), row


def test_simulator_mean_sojourn_matches_the_packet_simulation(sim_rows, lindley):
    """The same runs against the packet-level Lindley queue with the class's service law (exponential
    for web, gamma cs2 0.05 for gaming). Tolerance 4% (the reference's statistical error is <= 2%)."""
    for row in sim_rows:
        ref = lindley[(row["cs2"], row["rho"])]["sojourn_over_s"] * row["service_ms"]
        assert row["sojourn_ms"] == pytest.approx(ref, rel=0.04), row


def test_simulator_p99_exponential_tail(sim_rows, lindley):
    """p99 = base + ln(100) x mean sojourn. Exact for M/M/1: within 5% of the packet simulation's p99.
    For near-deterministic gaming packets the exponential tail is conservative: never below the
    packet simulation's p99, and at most 2x above it."""
    for row in sim_rows:
        assert row["p99_sojourn_ms"] == pytest.approx(LN100 * row["sojourn_ms"], rel=1e-3)
        ref = lindley[(row["cs2"], row["rho"])]["p99_sojourn_over_s"] * row["service_ms"]
        if row["cs2"] == 1.0:
            assert row["p99_sojourn_ms"] == pytest.approx(ref, rel=0.05), row
        else:
            assert ref <= row["p99_sojourn_ms"] <= 2.0 * ref, row


@pytest.fixture(scope="module")
def ceil_rows() -> list[dict[str, Any]]:
    return V.check_ceil_shaper()


def test_class_queues_at_its_own_ceil(ceil_rows):
    """A class below its ceil but near it waits at HTB's ceil bucket like an M/G/1 server of rate ceil,
    then is sent at the root's rate: web 45 of 50 Mbit/s (S_ceil 0.16 ms): 0.9 x 0.16 / 0.1 + 0.08 =
    1.52 ms; web 5 of 10 (S_ceil 0.8): 0.8 + 0.08 = 0.88 ms; gaming 9 of 10 (cs2 0.05, S_ceil 0.096):
    0.9 x 0.096 x 1.05 / 0.2 + 0.0096 = 0.4632 ms. Tolerance 0.1% (the 100 Gbit/s path adds ~1e-5 ms)."""
    for row in ceil_rows:
        wait = row["service_at_ceil_ms"] * pk_wait(row["rho"], row["cs2"])
        assert row["sojourn_ms"] == pytest.approx(wait + row["tx_at_root_ms"], rel=1e-3), row


def test_ceil_wait_matches_the_packet_simulation(ceil_rows, lindley):
    """The waiting part of the same runs against the Lindley queue at the ceil's rate. Tolerance 5%."""
    for row in ceil_rows:
        ref = lindley[(row["cs2"], row["rho"])]["wait_over_s"] * row["service_at_ceil_ms"]
        assert row["sojourn_ms"] - row["tx_at_root_ms"] == pytest.approx(ref, rel=0.05), row


def test_simulator_priority_wait_matches_packet_simulation():
    """Web EF 20 + web BE 60 Mbit/s on a 100 Mbit/s path (S = 0.08 ms): Cobham gives EF sojourn
    S + 0.8 S / 0.8 = 2 S and BE S + 0.8 S / (0.8 * 0.2) = 6 S; the packet-level priority queue agrees.
    Tolerance 1e-3 against the formula (plus the 100 Gbit/s tenant stage), 4% against the packet sim."""
    r = C.check_priorities()
    s = r["service_ms"]
    assert r["cobham_sojourn_ms"] == pytest.approx([2.0 * s, 6.0 * s], rel=1e-3)
    assert r["cobham_sojourn_ms"] == pytest.approx(r["cobham_packet_sim_sojourn_ms"], rel=0.04)


# ------------------------------------------------------------------ fluid backlog
def test_saturated_fifo_delay_is_buffer_over_capacity():
    """Gaming at 150 Mbit/s into 100 Mbit/s: the queue fills its buffer and a packet waits
    buffer / capacity = 50 ms and 200 ms; a third of the traffic overflows. Tenant leaves of 1000 packets
    shaped to 50 Mbit/s: 1000 x 0.96 kbit / 50 = 19.2 ms (gaming), 1000 x 3.2 kbit / 50 = 64 ms
    (transactions), 3/8 of 80 Mbit/s dropped. Tolerance 1%."""
    r = C.check_bufferbloat()
    assert r["queueing_delay_ms"] == pytest.approx([50.0, 200.0, 19.2, 64.0], rel=0.01)
    assert r["loss"] == pytest.approx([1 / 3, 1 / 3, 0.375, 0.375], rel=0.01)
    assert r["delivered_mbps"] == pytest.approx([100.0, 100.0, 50.0, 50.0], rel=1e-4)


@pytest.fixture(scope="module")
def little() -> dict[str, Any]:
    return V.check_littles_law()


def test_littles_law(little):
    """Mean backlog = throughput x mean delay over 10 s of time-varying load (diurnal cycle and bursts
    drive the queue from empty to tens of Mbit). Tolerance 1%."""
    assert little["max_backlog_kbit"] > 4.0 * little["mean_backlog_kbit"] > 0.0  # the queue really varies
    assert little["loss_kbit"] == pytest.approx(0.0, abs=1.0)  # nothing overflowed: L counts every bit
    assert little["little_ratio"] == pytest.approx(1.0, abs=0.01)


def test_reported_delay_is_the_fifo_sojourn(little):
    """The delay the simulator reports (backlog / current service rate) against each bit's FIFO sojourn
    read off the cumulative arrival and departure curves: mean within 2%, per-step mean absolute error
    under 5% of the mean delay (the service rate of the BE queue changes with the EF load)."""
    assert little["mean_delay_ms"] == pytest.approx(little["fifo_sojourn_from_curves_ms"], rel=0.02)
    assert little["per_step_delay_mae_ms"] < 0.05 * little["mean_delay_ms"]
    assert math.isfinite(little["mean_delay_ms"]) and little["mean_delay_ms"] > 10.0
