"""The joint action as CatCMAwM variables: which choices are integer, categorical or fixed; round trips."""

from __future__ import annotations

import numpy as np
import pytest

from shaping.spec import ActionLayout, tenant_spec
from shaping.tuned.space import SearchSpace
from tests.tuned.conftest import tiny_scenario


def _space(paths: int = 2) -> SearchSpace:
    scenario = tiny_scenario()
    scenario.paths = scenario.paths[:paths]
    return SearchSpace(tuple(ActionLayout(tenant_spec(scenario, n)) for n in ("gamer", "neighbour")))


def test_kinds_of_the_dimensions():
    space = _space()
    assert len(space.nvec) == 3 * 6 + 1 + 2 * 6 + 1
    ints, cats = set(space.integer_dims.tolist()), set(space.categorical_dims.tolist())
    # Per class: dscp (categorical), rate, ceil, priority, drop (integer), path (categorical, two options).
    assert {0, 5} <= cats and {1, 2, 3, 4} <= ints and 18 in ints  # gamer's first class and its root
    assert not ints & cats and len(ints) + len(cats) == len(space.nvec)
    one_path = _space(paths=1)
    assert 5 not in set(one_path.categorical_dims.tolist()) | set(one_path.integer_dims.tolist())


def test_samples_are_actions_of_the_layouts():
    space = _space(paths=1)
    start = np.zeros(len(space.nvec), dtype=np.int64)
    opt = space.optimizer(start, population=6, seed=3)
    for _ in range(6):
        joint = space.decode(opt.ask())
        assert ((joint >= 0) & (joint < space.nvec)).all()
        assert (space.join(space.split(joint)) == joint).all()
        for layout, action in zip(space.layouts, space.split(joint), strict=True):
            layout.decode(action)  # raises outside the layout
        assert (joint[[5, 11, 17]] == 0).all()  # the only path


def test_neighbours_change_one_choice():
    space = _space()
    joint = np.zeros(len(space.nvec), dtype=np.int64)
    moves = space.neighbours(joint)
    assert len(moves) == int((space.nvec - 1).sum())
    assert ((moves != joint).sum(1) == 1).all()


def test_nothing_to_search():
    layout = ActionLayout(tenant_spec(tiny_scenario(), "gamer"))
    space = SearchSpace((layout,))
    object.__setattr__(space, "nvec", np.ones_like(layout.nvec))  # a grid of one option per choice
    assert not space.searchable
    with pytest.raises(ValueError, match="nothing to search"):
        space.optimizer(np.zeros(len(layout.nvec), dtype=np.int64), 6, 0)
