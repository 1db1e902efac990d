"""Noise calibration and accounting: distributed shares add up to the central mechanism's noise."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from fed_client.privacy import add_noise_share
from fed_server.privacy import central_noise_std, distributed_share_std, epsilon_after, rounds_within_budget
from shaping.fed_settings import RunSettings


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


def test_dpsgd_budget_counts_the_steps_the_tenants_accountant_charges():
    from fed_client.dpsgd import DPSGD, PrivacyBudgetExceeded

    z, q, steps = 3.0, 0.25, 64  # e.g. 4 iterations x 4 epochs x 4 minibatches per round
    dp = DPSGD(noise_multiplier=z, max_grad_norm=1.0, delta=1e-5)
    for _ in range(3):  # three rounds, as the accountant's step hook charges them
        for _ in range(steps):
            dp.accountant.step(noise_multiplier=z, sample_rate=q)
    assert dp.epsilon() == pytest.approx(epsilon_after(3, z, q, 1e-5, steps_per_round=steps), rel=1e-9)
    assert dp.epsilon_after(steps, q) == pytest.approx(epsilon_after(4, z, q, 1e-5, steps_per_round=steps), rel=1e-9)
    n = rounds_within_budget(50, z, q, 1e-5, target_epsilon=8.0, steps_per_round=steps)
    assert 3 < n < 50
    assert epsilon_after(n, z, q, 1e-5, steps) <= 8.0 < epsilon_after(n + 1, z, q, 1e-5, steps)
    dp.check_budget(steps, q, None)
    dp.check_budget(steps, q, epsilon_after(4, z, q, 1e-5, steps) * (1 + 1e-9))  # at the budget: allowed
    with pytest.raises(PrivacyBudgetExceeded, match="target_epsilon"):
        dp.check_budget(steps, q, dp.epsilon() + 1e-3)


def test_the_run_stops_at_the_tighter_of_the_client_and_sample_level_budgets():
    from fed_server.privacy import rounds_allowed
    from shaping.config import PPOConfig

    ppo = PPOConfig(num_steps=32, update_epochs=4, num_minibatches=4)
    base = RunSettings(rounds=30, local_iterations=4, ppo=ppo, delta=1e-5)
    assert base.dpsgd_steps_per_round == 64
    assert rounds_allowed(replace(base, target_epsilon=8.0)) == 30  # no noise anywhere: nothing to account
    sample = replace(base, dpsgd_noise=3.72, target_epsilon=8.0)
    n = rounds_allowed(sample)
    assert n == rounds_within_budget(30, 3.72, 0.25, 1e-5, 8.0, steps_per_round=64) and 0 < n < 30
    client = replace(base, privacy_mode="central", noise_multiplier=1.2, target_epsilon=8.0)
    assert rounds_allowed(client) == rounds_within_budget(30, 1.2, 1.0, 1e-5, 8.0) == 3
    both = replace(sample, privacy_mode="central", noise_multiplier=1.2)
    assert rounds_allowed(both) == min(n, 3)
    assert rounds_allowed(replace(sample, target_epsilon=None)) == 30


@pytest.mark.parametrize(
    ("mode", "secagg", "attacker", "clips"),
    [
        ("none", False, False, False),
        ("clip", False, False, False),  # the server clips
        ("central", False, False, False),  # the server clips
        ("clip", True, False, True),  # under SecAgg+ only the clients can
        ("central", True, False, True),
        ("distributed", True, False, True),
        ("clip", True, True, False),  # a malicious tenant skips it
    ],
)
def test_a_client_clips_only_where_the_server_cannot(monkeypatch, mode, secagg, attacker, clips):
    import fed_client.privacy as privacy

    calls: list[str] = []
    monkeypatch.setattr(privacy, "fixedclipping_mod", lambda msg, ctxt, call_next: calls.append("clip") or "clipped")
    settings = replace(RunSettings(), privacy_mode=mode, secure_aggregation=secagg, noise_multiplier=1.0)
    clipping = privacy.privacy_mods(lambda _: settings, lambda _: attacker)[-1]
    reply = clipping("msg", "ctxt", lambda msg, ctxt: "passed")
    assert reply == ("clipped" if clips else "passed") and calls == (["clip"] if clips else [])
