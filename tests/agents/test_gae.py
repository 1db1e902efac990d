"""compute_gae against hand-computed advantages on tiny episodes."""

from __future__ import annotations

import pytest
import torch

from shaping.agents import compute_gae


def _t(rows: list[list[float]]) -> torch.Tensor:
    """(T, B) tensor from per-environment rows."""
    return torch.tensor(rows, dtype=torch.float32).T


def _b(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool).T


def test_termination_and_truncation_bootstrap_by_hand():
    gamma, lam = 0.5, 0.5  # gamma * lambda = 0.25
    # env 0 terminates at t=1: no bootstrap there, and A_2 (the next episode) does not reach A_1.
    # env 1 is truncated at t=0: bootstraps the final observation's value 4.0 (not values[1] = 2.0).
    rewards = _t([[1.0, 2.0, 3.0], [1.0, 0.0, 1.0]])
    values = _t([[0.5, 1.0, 1.5], [1.0, 2.0, 1.0]])
    next_values = _t([[1.0, 1.5, 2.0], [4.0, 1.0, 3.0]])
    terminations = _b([[0, 1, 0], [0, 0, 0]])
    truncations = _b([[0, 0, 0], [1, 0, 0]])

    adv, ret = compute_gae(rewards, values, next_values, terminations, truncations, gamma, lam)

    # env 0: d2 = 3 + .5*2 - 1.5 = 2.5; d1 = 2 + 0 - 1 = 1 (terminated), A1 = 1 (A2 cut off);
    #        d0 = 1 + .5*1 - .5 = 1, A0 = 1 + .25*1 = 1.25
    # env 1: d2 = 1 + .5*3 - 1 = 1.5; d1 = 0 + .5*1 - 2 = -1.5, A1 = -1.5 + .25*1.5 = -1.125;
    #        d0 = 1 + .5*4 - 1 = 2 (truncated: bootstrap 4, A1 cut off), A0 = 2
    expected = _t([[1.25, 1.0, 2.5], [2.0, -1.125, 1.5]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_termination_after_truncation_ignores_next_value():
    # A terminated last step must not bootstrap even a huge next value.
    adv, _ = compute_gae(_t([[1.0]]), _t([[0.0]]), _t([[100.0]]), _b([[1]]), _b([[0]]), gamma=0.9, gae_lambda=0.95)
    assert adv.item() == pytest.approx(1.0)


def test_lambda_one_gives_monte_carlo_returns():
    # gamma = lambda = 1, no value: returns are the undiscounted rewards-to-go within each episode,
    # plus the bootstrap value at the end of the rollout.
    rewards = _t([[1.0, 1.0, 1.0, 1.0]])
    values = torch.zeros_like(rewards)
    next_values = _t([[0.0, 0.0, 0.0, 10.0]])
    terminations = _b([[0, 1, 0, 0]])
    truncations = torch.zeros_like(terminations)
    _, ret = compute_gae(rewards, values, next_values, terminations, truncations, 1.0, 1.0)
    torch.testing.assert_close(ret, _t([[2.0, 1.0, 12.0, 11.0]]))


def test_lambda_zero_is_one_step_td():
    rewards = _t([[1.0, 2.0]])
    values = _t([[0.5, 0.25]])
    next_values = _t([[0.25, 3.0]])
    zeros = torch.zeros_like(rewards, dtype=torch.bool)
    adv, _ = compute_gae(rewards, values, next_values, zeros, zeros, 0.9, 0.0)
    torch.testing.assert_close(adv, _t([[1.0 + 0.9 * 0.25 - 0.5, 2.0 + 0.9 * 3.0 - 0.25]]))
