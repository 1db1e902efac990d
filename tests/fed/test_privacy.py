"""Noise calibration and accounting: distributed shares add up to the central mechanism's noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fed_client.privacy import add_noise_share
from fed_server.privacy import central_noise_std, distributed_share_std, epsilon_after, rounds_within_budget


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    e = [epsilon_after(r, 1.0, 1.0, 1e-5) for r in (1, 2, 5)]
    assert e[0] < e[1] < e[2]
    assert epsilon_after(5, 2.0, 1.0, 1e-5) < e[2]
    assert epsilon_after(5, 1.0, 0.1, 1e-5) < e[2]  # client sampling amplifies privacy
    assert epsilon_after(0, 1.0, 1.0, 1e-5) == 0.0
    assert math.isinf(epsilon_after(1, 0.0, 1.0, 1e-5))


def test_budget_stops_before_it_is_exceeded():
    n = rounds_within_budget(20, 1.0, 1.0, 1e-5, target_epsilon=8.0)
    assert 0 < n < 20
    assert epsilon_after(n, 1.0, 1.0, 1e-5) <= 8.0 < epsilon_after(n + 1, 1.0, 1.0, 1e-5)
    assert rounds_within_budget(20, 1.0, 1.0, 1e-5, None) == 20
    assert rounds_within_budget(5, 1.0, 1.0, 1e-5, 0.1) == 0


@pytest.mark.parametrize("n", [4, 10])
def test_distributed_shares_sum_to_the_central_noise(n):
    z, c = 1.3, 0.5
    share = distributed_share_std(z, c, n)
    rng = np.random.default_rng(0)
    zero = [np.zeros(20_000, dtype=np.float64)]
    # The server's mean of n noised (here: zero) updates carries only the noise.
    mean = sum(add_noise_share(zero, share, rng)[0] for _ in range(n)) / n
    assert mean.std() == pytest.approx(central_noise_std(z, c, n), rel=0.03)
    assert central_noise_std(z, c, n) == pytest.approx(z * c / n)
