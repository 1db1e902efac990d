"""ActionLayout: sizes, a hand-decoded action, encode/decode round trips and bounds errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shaping.baselines import BASELINES
from shaping.sim.scenarios import load_scenario
from shaping.spec import (
    ACTION_FIELDS,
    ActionLayout,
    PlanBatch,
    SpecError,
    TenantSpec,
    decode_batch,
    scenario_specs,
    stack_plans,
)


def test_sizes_follow_the_levels(spec: TenantSpec):
    layout = ActionLayout(spec)
    # dscp (0, 18, 34, 46), 8 rate levels, 5 ceil levels, 4 priorities, 5 drop levels, 2 paths.
    assert layout.per_class == (4, 8, 5, 4, 5, 2)
    assert len(ACTION_FIELDS) == len(layout.per_class)
    assert layout.nvec.tolist() == [4, 8, 5, 4, 5, 2] * 3 + [len(spec.root_levels)]


def test_decode_by_hand(spec: TenantSpec):
    """game: EF, rate 10%, ceil 100%, prio 1, drop 1%, path 1; backup: BE, rate 50%, ceil 10% (raised
    to the rate), prio 3, no drop, path 0; site: AF21, 2%, 25%, prio 2, 25% drop, path 0; root 100%."""
    action = [3, 2, 4, 1, 1, 1, 0, 5, 0, 3, 0, 0, 1, 0, 1, 2, 4, 0, 7]
    plan = ActionLayout(spec).decode(action)
    game, backup, site = plan.classes
    assert (game.dscp, game.priority, game.path) == (46, 1, 1)
    assert game.rate_mbps == pytest.approx(10.0) and game.ceil_mbps == pytest.approx(100.0)
    assert game.drop_prob == pytest.approx(0.01)
    assert backup.rate_mbps == pytest.approx(50.0) and backup.ceil_mbps == pytest.approx(50.0)
    assert (backup.dscp, backup.priority, backup.path, backup.drop_prob) == (0, 3, 0, 0.0)
    assert (site.dscp, site.priority) == (18, 2)
    assert site.rate_mbps == pytest.approx(2.0) and site.ceil_mbps == pytest.approx(25.0)
    assert site.drop_prob == pytest.approx(0.25)
    assert plan.root_mbps == pytest.approx(100.0)
    assert plan.tenant == "acme"
    plan.validate(spec)


def random_actions(layout: ActionLayout, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, layout.nvec, size=(n, len(layout.nvec)))


def test_plan_round_trip_is_exact(spec: TenantSpec):
    """decode(encode(plan)) == plan for every decodable plan (the plan is the source of truth)."""
    layout = ActionLayout(spec)
    for action in random_actions(layout, 200):
        plan = layout.decode(action)
        assert layout.decode(layout.encode(plan)) == plan


def test_action_round_trip_where_ceil_is_not_raised(spec: TenantSpec):
    """encode(decode(a)) == a unless decoding raised a ceil below the rate (then the ceil index differs)."""
    layout = ActionLayout(spec)
    rate, ceil = np.array(spec.rate_levels), np.array(spec.ceil_levels)
    checked = 0
    for action in random_actions(layout, 300, seed=1):
        per_class = action[:-1].reshape(-1, len(ACTION_FIELDS))
        if (ceil[per_class[:, 2]] < rate[per_class[:, 1]]).any():
            continue
        np.testing.assert_array_equal(layout.encode(layout.decode(action)), action)
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_plans_encode_inside_the_layout(spec: TenantSpec, name: str):
    action = ActionLayout(spec).encode(BASELINES[name].plan(spec))
    assert ((action >= 0) & (action < ActionLayout(spec).nvec)).all()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.__setitem__(0, -1),  # negative choice
        lambda a: a.__setitem__(0, 4),  # dscp index past the 4 marks
        lambda a: a.__setitem__(5, 2),  # path index past the 2 paths
        lambda a: a.__setitem__(-1, 8),  # root index past the 8 levels
    ],
)
def test_decode_rejects_out_of_range_choices(spec: TenantSpec, mutate):
    action = np.zeros(len(ActionLayout(spec).nvec), dtype=np.int64)
    mutate(action)
    with pytest.raises(SpecError, match="outside the layout"):
        ActionLayout(spec).decode(action)


def test_decode_rejects_a_wrong_length(spec: TenantSpec):
    with pytest.raises(SpecError, match="outside the layout"):
        ActionLayout(spec).decode([0] * 18)


def test_decode_batch_matches_decode(spec: TenantSpec):
    layout = ActionLayout(spec)
    actions = random_actions(layout, 6, seed=2)
    batch = decode_batch(
        torch.as_tensor(actions).view(2, 3, -1), len(spec.classes), torch.tensor([100.0] * 3), layout.levels()
    )
    assert batch.rate_mbps.shape == (2, 3, 3)
    for i, action in enumerate(actions):
        assert batch.plan(i // 3, i % 3, spec) == layout.decode(action)


@pytest.mark.parametrize("cap", [100.0, 37.3, 999.9])
def test_numpy_decode_is_bit_identical_to_decode_batch(spec: TenantSpec, cap: float):
    """decode (numpy, cached tables) and decode_batch (torch, float32) give equal plans, odd caps included."""
    from dataclasses import replace

    tenant = replace(spec, cap_mbps=cap)
    layout = ActionLayout(tenant)
    actions = random_actions(layout, 300, seed=3)
    batch = decode_batch(torch.as_tensor(actions).view(1, len(actions), -1), len(tenant.classes),
                         torch.tensor([cap] * len(actions)), layout.levels())  # fmt: skip
    for i, action in enumerate(actions):
        assert layout.decode(action) == batch.plan(0, i, tenant)


def test_nvec_is_cached_but_callers_get_a_copy(spec: TenantSpec):
    layout = ActionLayout(spec)
    first = layout.nvec
    first[0] = 99
    assert layout.nvec[0] == 4 and layout.nvec is not layout.nvec


def test_encode_batch_is_encode_of_each_plan():
    rng = np.random.default_rng(0)
    for name in ("default", "edge_gaming", "small_congested"):
        for spec in scenario_specs(load_scenario(name)):
            layout = ActionLayout(spec)
            plans = [layout.decode(rng.integers(0, layout.nvec)) for _ in range(16)]
            plans += [b.plan(spec) for b in BASELINES.values()]  # off the grid: nearest levels
            stacked = stack_plans([[p] for p in plans], len(spec.classes))
            batch = PlanBatch(*(x[:, 0] for x in stacked))
            want = torch.tensor(np.stack([layout.encode(p) for p in plans]))
            assert torch.equal(layout.encode_batch(batch), want)
