"""Running observation normalizer: statistics from batches, clipping, and state_dict round trip."""

from __future__ import annotations

import pytest
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


def test_frozen_features_keep_their_statistics_and_the_others_update():
    torch.manual_seed(1)
    data = torch.randn(200, 3) * 3 + 5
    norm = RunningNorm(3)
    norm.freeze(torch.tensor([False, True, False]))
    norm.update(data)
    free = RunningNorm(3)
    free.update(data)
    torch.testing.assert_close(norm.mean[[0, 2]], free.mean[[0, 2]])
    torch.testing.assert_close(norm.var[[0, 2]], free.var[[0, 2]])
    assert (float(norm.mean[1]), float(norm.var[1])) == (0.0, 1.0)
    assert set(norm.state_dict()) == {"mean", "var", "count"}  # the mask is not part of the weights
    norm.freeze(None)
    norm.update(data)
    assert float(norm.mean[1]) > 2.0


@pytest.mark.parametrize("bad", [torch.ones(2, dtype=torch.bool), torch.ones(3)])
def test_freeze_refuses_a_mask_of_the_wrong_shape_or_type(bad):
    with pytest.raises(ValueError, match=r"bool mask of shape \(3,\)"):
        RunningNorm(3).freeze(bad)
