"""tuned_static's validation: the search's winner against every baseline on fresh seeds, and the cache keeps it."""

from __future__ import annotations

import dataclasses
import json

import pytest

import shaping.tuned.cache as cache
from shaping.baselines import BASELINES
from shaping.spec import ClassShaping, ShapingPlan, scenario_specs
from shaping.tuned import TRAIN_SEED, cache_key, load_or_tune, lookup
from shaping.tuned.cache import cache_path, ensure_validated, validation_reason
from shaping.tuned.search import tune_static
from shaping.tuned.validation import SEARCH, VALIDATION_SEED, ValidationSettings, validate
from tests.tuned.conftest import TINY

FEW = dataclasses.replace(TINY, generations=1)
FRESH = ValidationSettings(seeds=2)


def _gamer(scenario):
    return next(s for s in scenario_specs(scenario) if s.name == "gamer")


def _starved(scenario) -> ShapingPlan:
    """A plan no operator would keep: every class of `gamer` squeezed to a trickle on the slow path."""
    spec = _gamer(scenario)
    trickle = ClassShaping(rate_mbps=0.05, ceil_mbps=0.05, burst_bytes=1500, priority=7, dscp=0, drop_prob=0.5,
                           path=1)  # fmt: skip
    return ShapingPlan(tenant="gamer", classes=tuple(trickle for _ in spec.classes), root_mbps=0.1)


def test_validation_seeds_are_neither_training_nor_evaluation_seeds():
    assert VALIDATION_SEED not in (0, TRAIN_SEED) and ValidationSettings().seed == VALIDATION_SEED
    with pytest.raises(ValueError, match="seeds"):
        ValidationSettings(seeds=-1)


def test_the_best_candidate_on_the_validation_seeds_is_kept(scenario):
    v = validate(scenario, ["gamer"], [_starved(scenario)], False, 12, FRESH)
    assert set(v.scores) == {SEARCH, *(f"baseline:{n}" for n in BASELINES)}
    assert v.winner != SEARCH  # the starved plan loses to any baseline
    assert all(v.scores[v.winner][0] <= r for r, _ in v.scores.values())
    name = v.winner.removeprefix("baseline:")
    assert v.plans == (BASELINES[name].plan(_gamer(scenario)),) and v.aqm == BASELINES[name].aqm


def test_the_search_stays_on_a_tie(scenario):
    # The search's winner equal to a baseline's plan: same score, and the search is listed first.
    plan = BASELINES["static_priority"].plan(_gamer(scenario))
    v = validate(scenario, ["gamer"], [plan], BASELINES["static_priority"].aqm, 12, FRESH)
    assert v.scores[SEARCH] == v.scores["baseline:static_priority"]
    if v.scores[SEARCH][0] <= min(r for r, _ in v.scores.values()):
        assert v.winner == SEARCH


def test_an_overfit_winner_gives_way_and_its_record_stays(scenario):
    tuned = tune_static(scenario, FEW, validation=FRESH)
    forced = dataclasses.replace(tuned, plans=(_starved(scenario),), aqm=False, source="search").validated(
        scenario, FRESH
    )
    assert forced.validation is not None and forced.validation.winner != SEARCH
    assert forced.final_plans == forced.validation.plans and forced.final_aqm == forced.validation.aqm
    assert forced.final_source == f"validated:{forced.validation.winner}"
    assert forced.plans == (_starved(scenario),)  # the search's record is kept as it was
    unvalidated = forced.validated(scenario, ValidationSettings(seeds=0))
    assert unvalidated.validation is None and unvalidated.final_plans == unvalidated.plans


def test_the_cache_keeps_the_validation_and_revalidates_without_searching(tmp_path, scenario, monkeypatch):
    tuned = load_or_tune(scenario, FEW, cache_dir=tmp_path, validation=FRESH)
    path = cache_path(tmp_path, scenario, cache_key(scenario, ["gamer"], FEW))
    doc = json.loads(path.read_text())
    assert doc["validation"]["seeds"] == 2 and doc["validation"]["winner"] == tuned.validation.winner
    again = lookup(tmp_path, scenario, FEW)
    assert again is not None and again.validation == tuned.validation
    assert validation_reason(scenario, again, FRESH) is None

    def refuse(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(cache, "tune_static", refuse)
    more = ValidationSettings(seeds=3)
    assert "validated on 2 seeds" in validation_reason(scenario, again, more)
    revalidated = load_or_tune(scenario, FEW, cache_dir=tmp_path, validation=more)
    assert revalidated.validation.settings == more and revalidated.plans == tuned.plans
    assert json.loads(path.read_text())["validation"]["seeds"] == 3

    # An entry from before validation existed: validated in place, its search reused.
    doc = json.loads(path.read_text())
    del doc["validation"]
    path.write_text(json.dumps(doc))
    assert lookup(tmp_path, scenario, FEW).validation is None
    assert ensure_validated(tmp_path, scenario, lookup(tmp_path, scenario, FEW), FRESH).validation is not None
    assert "validation" in json.loads(path.read_text())


def test_a_stale_validation_is_run_again(tmp_path, scenario):
    tuned = load_or_tune(scenario, FEW, cache_dir=tmp_path, validation=FRESH)
    path = cache_path(tmp_path, scenario, cache_key(scenario, ["gamer"], FEW))
    doc = json.loads(path.read_text())
    doc["validation"]["scores"][tuned.validation.winner]["sla_violation_rate"] += 0.5
    path.write_text(json.dumps(doc))
    hit = lookup(tmp_path, scenario, FEW)
    assert "now scores" in (validation_reason(scenario, hit, FRESH) or "")
    assert validation_reason(scenario, hit, FRESH, verify=False) is None
    fixed = load_or_tune(scenario, FEW, cache_dir=tmp_path, validation=FRESH)
    assert fixed.validation == tuned.validation
