"""Client-level differential privacy of the federation: noise calibration and per-round accounting.

Central DP (Flower's DifferentialPrivacyClientSideFixedClipping): each client clips its update to
``clipping_norm`` (fixedclipping_mod, the last client mod) and the server adds N(0, (z C / n)^2) to
the mean of n updates. Distributed DP (ours): each client adds N(0, (z C)^2 / n) to its clipped update
before SecAgg+ masks it; the n shares sum to N(0, (z C)^2), so the mean carries exactly the central
mechanism's N(0, (z C / n)^2) while the server only ever unmasks the noised sum. Both are the
sampled Gaussian mechanism with sampling rate ``fraction_fit`` and noise multiplier z, accounted
with Opacus's RDP analysis (Mironov et al.), so both report the same epsilon.

``privacy.target_epsilon`` also bounds each tenant's sample-level epsilon when DP-SGD is on: its
steps per round are known up front (RunSettings.dpsgd_steps_per_round), and these are the orders
Opacus's RDPAccountant uses, so the server's count matches what the tenants' accountants report.
"""

from __future__ import annotations

import math

from shaping.fed_settings import RunSettings

#: Rényi orders of the accountant (Opacus's defaults).
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def epsilon_after(
    rounds: int, noise_multiplier: float, sample_rate: float, delta: float, steps_per_round: int = 1
) -> float:
    """(epsilon at delta) of `rounds` rounds of `steps_per_round` steps of the sampled Gaussian mechanism.

    One step per round is the client-level mechanism; a tenant's DP-SGD takes several per round (its
    minibatch steps, each at sampling rate 1 / num_minibatches). inf without noise.
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    # Imported here: opacus takes seconds to import, and only noised runs account.
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=rounds * steps_per_round, orders=list(ORDERS)
    )
    eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def rounds_within_budget(
    rounds: int,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    target_epsilon: float | None,
    steps_per_round: int = 1,
) -> int:
    """The most rounds (at most `rounds`) whose spent epsilon stays within target_epsilon (None: all)."""
    if target_epsilon is None:
        return rounds
    done = 0
    while done < rounds and (
        epsilon_after(done + 1, noise_multiplier, sample_rate, delta, steps_per_round) <= target_epsilon
    ):
        done += 1
    return done


def rounds_allowed(s: RunSettings) -> int:
    """Rounds of the run that fit privacy.target_epsilon: the client-level budget under central or
    distributed DP, and each tenant's sample-level budget under DP-SGD (all of s.rounds without a budget)."""
    allowed = s.rounds
    if s.client_level_dp:
        allowed = rounds_within_budget(s.rounds, s.noise_multiplier, s.fraction_fit, s.delta, s.target_epsilon)
    if s.dpsgd_noise > 0:
        sample_rate = 1.0 / s.ppo.num_minibatches
        allowed = min(allowed, rounds_within_budget(s.rounds, s.dpsgd_noise, sample_rate, s.delta, s.target_epsilon,
                                                    s.dpsgd_steps_per_round))  # fmt: skip
    return allowed


def central_noise_std(noise_multiplier: float, clipping_norm: float, n_clients: int) -> float:
    """Std of the Gaussian noise on the mean of n clipped updates (Flower's compute_stdv)."""
    return noise_multiplier * clipping_norm / n_clients


def distributed_share_std(noise_multiplier: float, clipping_norm: float, n_clients: int) -> float:
    """Std of one client's noise share: n shares sum to the central mechanism's noise on the sum."""
    return noise_multiplier * clipping_norm / math.sqrt(n_clients)
