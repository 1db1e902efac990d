"""tune_static on a tiny scenario: never worse than a baseline, the evaluation's protocol, deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shaping.baselines import BASELINES
from shaping.evaluation import evaluate_policy
from shaping.policies import make_policy
from shaping.spec import ActionLayout, tenant_spec
from shaping.tuned import TunedPlanPolicy, tune_static
from shaping.tuned.objective import CandidateEvaluator
from tests.tuned.conftest import TINY


@pytest.fixture(scope="module")
def tuned():
    from tests.tuned.conftest import tiny_scenario

    return tune_static(tiny_scenario(), TINY)


def test_never_worse_than_a_baseline_on_the_training_seeds(tuned):
    assert tuned.controlled == ("gamer",) and set(tuned.baselines) == set(BASELINES)
    for name, b in tuned.baselines.items():
        assert b.aqm == BASELINES[name].aqm
        assert (tuned.sla_violation_rate, -tuned.mean_reward) <= (b.sla_violation_rate, -b.mean_reward), name
    # Each polish round runs every single-choice change of gamer's action: 3 classes x (3 + 7 + 4 + 3 + 4 + 1)
    # other options, plus 7 other root rates.
    moves = 3 * 22 + 7
    searched = tuned.evaluations - 2 * 2 * len(BASELINES) - 2 * TINY.generations * TINY.population
    assert searched in (2 * TINY.polish_rounds * moves, 2 * TINY.polish_rounds * moves + 1)  # + the carry-over
    assert tuned.env_steps == tuned.evaluations * TINY.seeds * TINY.steps


def test_scores_are_the_evaluations_on_the_training_seeds(scenario, tuned):
    # Same seeds, same load, same definitions: a baseline's score is what evaluate_policy reports for it,
    # and so is the tuned plan's when it runs as a policy.
    # The simulator's arithmetic agrees across batch sizes to an ulp, which may flip one (class, step) pair
    # sitting exactly at an SLA bound: that is the tolerance.
    pair = 1.0 / (TINY.seeds * TINY.steps * 3)
    kw = {"seeds": TINY.seeds, "steps": TINY.steps, "seed": TINY.seed}
    for name in ("static_priority", "fq_codel"):
        r = evaluate_policy(scenario, make_policy(name), **kw)
        assert r.sla_violation_rate == pytest.approx(tuned.baselines[name].sla_violation_rate, abs=pair)
        assert r.tenants["gamer"].reward == pytest.approx(tuned.baselines[name].mean_reward, abs=1e-3)
    searched = dataclasses.replace(tuned, validation=None)  # the search's winner, not the validation's pick
    r = evaluate_policy(scenario, TunedPlanPolicy(searched, scenario), **kw)
    assert r.sla_violation_rate == pytest.approx(tuned.sla_violation_rate, abs=pair)
    assert r.tenants["gamer"].reward == pytest.approx(tuned.mean_reward, abs=1e-3)


def test_the_plans_are_their_actions_decoded(scenario, tuned):
    layout = ActionLayout(tenant_spec(scenario, "gamer"))
    (plan,), (action,) = tuned.plans, tuned.actions
    if not tuned.source.startswith("baseline:"):
        assert layout.decode(np.array(action)) == plan
    ev = CandidateEvaluator(scenario, (0,), seeds=1, steps=1, seed=0)
    decoded, stacked = ev.from_actions([[np.array(action)]]), ev.from_plans([[layout.decode(np.array(action))]])
    for x, y in zip(decoded, stacked, strict=True):
        assert x.dtype == y.dtype and bool((x == y).all())


def test_deterministic_from_its_seed(scenario, tuned):
    again = tune_static(scenario, TINY)
    assert dataclasses.replace(again, wall_s=0.0) == dataclasses.replace(tuned, wall_s=0.0)


def test_one_codel_setting(scenario):
    off = tune_static(scenario, dataclasses.replace(TINY, generations=1, aqm=(False,)))
    assert off.aqm is False
    # The baselines still run under CoDel too (fq_codel's own setting, for its score), the search does not.
    assert off.evaluations == 2 * 2 * len(BASELINES) + TINY.population + 3 * 22 + 7
    assert off.baselines["fq_codel"].aqm is True


def test_settings_are_checked():
    with pytest.raises(ValueError, match="population"):
        dataclasses.replace(TINY, population=3)
    with pytest.raises(ValueError, match="aqm"):
        dataclasses.replace(TINY, aqm=())
