"""Running observation normalizer: statistics from batches, clipping, and state_dict round trip."""

from __future__ import annotations

import torch

from shaping.agents import RunningNorm


def test_batch_updates_match_the_statistics_of_all_data():
    torch.manual_seed(0)
    data = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -1.0, 0.0])
    norm = RunningNorm(3)
    for chunk in data.split([1, 99, 400, 500]):
        norm.update(chunk.float())
    torch.testing.assert_close(norm.mean, data.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False), atol=1e-4, rtol=1e-4)
    assert float(norm.count) == 1000 + 1e-4
    out = norm(data.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_forward_clips_and_never_updates():
    norm = RunningNorm(2, clip=5.0)
    norm.update(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))  # mean 1, var 1
    out = norm(torch.tensor([[100.0, -100.0], [1.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[5.0, -5.0], [0.0, 1.0]]), atol=1e-3, rtol=0)
    assert float(norm.count) == 2 + 1e-4
    norm.update(torch.empty(0, 2))
    assert float(norm.count) == 2 + 1e-4


def test_statistics_travel_in_the_state_dict():
    norm = RunningNorm(4)
    norm.update(torch.randn(10, 3, 4) + 3)
    state = norm.state_dict()
    assert set(state) == {"mean", "var", "count"}
    other = RunningNorm(4)
    other.load_state_dict(state)
    x = torch.randn(5, 4)
    torch.testing.assert_close(other(x), norm(x))
