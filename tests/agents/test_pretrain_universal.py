"""The universal model's pretraining loop: evaluations, the best weights, the wall-clock stop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shaping.agents.global_model import get_weights, make_model, set_weights
from shaping.agents.local_train import evaluate
from shaping.agents.pretrain_universal import pretrain_universal
from shaping.agents.universal import TenantTask, UniversalLayout, make_env
from shaping.config import PPOConfig

TINY = PPOConfig(num_steps=4, learning_rate=3e-3, update_epochs=1, num_minibatches=1)
TASKS = (TenantTask("small_congested", "shop", 2), TenantTask("datacenter", "crm", 2))


def _setup():
    layout = UniversalLayout()
    model = make_model(layout, (8,), seed=0)
    train = [make_env(t, layout) for t in TASKS]
    evals = [(t.name, make_env(t, layout, 2, episode_steps=3)) for t in TASKS]
    return layout, model, train, evals


def test_evaluates_every_chunk_and_keeps_the_best_weights():
    layout, model, train, evals = _setup()
    seen = []
    res = pretrain_universal(model, train, evals, TINY, iterations=5, eval_every=2, eval_steps=3, eval_seed=9,
                             on_eval=seen.append)  # fmt: skip
    assert [h.iteration for h in res.history] == [0, 2, 4, 5] and seen == res.history  # the start, then chunks
    assert res.iterations == 5 and not res.stopped_early
    assert res.env_steps == sum(2 * 4 for _ in range(5))  # no step lost to an autoreset in 5 x 4 steps
    assert res.best.reward == max(h.reward for h in res.history)
    assert set(res.best.tenants) == {t.name for t in TASKS}
    assert res.best.reward == pytest.approx(np.mean([v["reward"] for v in res.best.tenants.values()]))
    # The best weights reproduce the best evaluation; the last ones are the model's.
    assert all(np.array_equal(a, b) for a, b in zip(res.last_weights, get_weights(model), strict=True))
    probe = make_model(layout, (8,), seed=1)
    set_weights(probe, res.best_weights)
    again = [evaluate(probe, env, 3, 9).reward for _, env in evals]
    assert float(np.mean(again)) == pytest.approx(res.best.reward, abs=1e-5)


def test_wall_clock_limit_stops_after_an_evaluation():
    _, model, train, evals = _setup()
    ticks = itertools.count(0.0, 10.0)  # every call of the clock is 10 s later
    res = pretrain_universal(model, train, evals, TINY, iterations=8, eval_every=2, eval_steps=2, eval_seed=0,
                             max_wall_s=5.0, clock=lambda: next(ticks))  # fmt: skip
    assert res.stopped_early and res.iterations == 0 and len(res.history) == 1  # the start's evaluation ran past it


@pytest.mark.parametrize(("iterations", "every", "evals"), [(0, 1, True), (2, 0, True), (2, 1, False)])
def test_refuses_an_empty_budget_or_no_evaluation(iterations, every, evals):
    _, model, train, eval_envs = _setup()
    with pytest.raises(ValueError):
        pretrain_universal(model, train, eval_envs if evals else [], TINY, iterations=iterations, eval_every=every,
                           eval_steps=2, eval_seed=0)  # fmt: skip
