"""Client-level differential privacy of the federation: noise calibration and per-round accounting.

Central DP (Flower's DifferentialPrivacyClientSideFixedClipping): each client clips its update to
``clipping_norm`` (fixedclipping_mod, the last client mod) and the server adds N(0, (z C / n)^2) to
the mean of n updates. Distributed DP (ours): each client adds N(0, (z C)^2 / n) to its clipped update
before SecAgg+ masks it; the n shares sum to N(0, (z C)^2), so the mean carries exactly the central
mechanism's N(0, (z C / n)^2) while the server only ever unmasks the noised sum. Both are the
sampled Gaussian mechanism with sampling rate ``fraction_fit`` and noise multiplier z, accounted
with Opacus's RDP analysis (Mironov et al.), so both report the same epsilon.
"""

from __future__ import annotations

import math

#: Rényi orders of the accountant (Opacus's defaults).
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def epsilon_after(rounds: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    """(epsilon at delta) of `rounds` rounds of the sampled Gaussian mechanism; inf without noise."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    # Imported here: opacus takes seconds to import, and only noised runs account.
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=rounds, orders=list(ORDERS))
    eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def rounds_within_budget(
    rounds: int, noise_multiplier: float, sample_rate: float, delta: float, target_epsilon: float | None
) -> int:
    """The most rounds (at most `rounds`) whose spent epsilon stays within target_epsilon (None: all)."""
    if target_epsilon is None:
        return rounds
    done = 0
    while done < rounds and epsilon_after(done + 1, noise_multiplier, sample_rate, delta) <= target_epsilon:
        done += 1
    return done


def central_noise_std(noise_multiplier: float, clipping_norm: float, n_clients: int) -> float:
    """Std of the Gaussian noise on the mean of n clipped updates (Flower's compute_stdv)."""
    return noise_multiplier * clipping_norm / n_clients


def distributed_share_std(noise_multiplier: float, clipping_norm: float, n_clients: int) -> float:
    """Std of one client's noise share: n shares sum to the central mechanism's noise on the sum."""
    return noise_multiplier * clipping_norm / math.sqrt(n_clients)
