"""The tuned_static cache: round trip, and every change of what a result depends on makes it tuned again."""

from __future__ import annotations

import dataclasses
import json

import pytest

import shaping.tuned.cache as cache
from shaping.tuned import cache_key, load_or_tune, lookup
from shaping.tuned.cache import cache_path, from_json, to_json
from tests.tuned.conftest import TINY, tiny_scenario

FEW = dataclasses.replace(TINY, generations=1)


def _entry(tmp_path, scenario, settings=FEW):
    return cache_path(tmp_path, scenario, cache_key(scenario, ["gamer"], settings))


def test_round_trip(tmp_path, scenario):
    tuned = load_or_tune(scenario, FEW, cache_dir=tmp_path)
    path = _entry(tmp_path, scenario)
    assert path.is_file() and path.name.startswith("tiny-")
    doc = json.loads(path.read_text())
    assert doc["spec_version"] and doc["library"].startswith("cmaes ") and doc["settings"]["seeds"] == FEW.seeds
    assert doc["actions"]["gamer"] == list(tuned.actions[0])
    again = lookup(tmp_path, scenario, FEW)
    assert again is not None
    assert dataclasses.replace(again, wall_s=0.0) == dataclasses.replace(from_json(to_json(tuned, "k")), wall_s=0.0)
    assert again.plans == tuned.plans and again.settings == tuned.settings


def test_a_cached_entry_is_reused(tmp_path, scenario, monkeypatch):
    load_or_tune(scenario, FEW, cache_dir=tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("tuned again")

    monkeypatch.setattr(cache, "tune_static", refuse)
    assert load_or_tune(scenario, FEW, cache_dir=tmp_path).controlled == ("gamer",)


@pytest.mark.parametrize("change", ["scenario", "settings", "spec_version", "controlled"])
def test_a_change_invalidates_the_entry(tmp_path, scenario, monkeypatch, change):
    load_or_tune(scenario, FEW, cache_dir=tmp_path)
    settings, other = FEW, scenario
    if change == "scenario":
        other = tiny_scenario(capacity=61.0)
    elif change == "settings":
        settings = dataclasses.replace(FEW, seed=FEW.seed + 1)
    elif change == "spec_version":
        monkeypatch.setattr(cache, "SPEC_VERSION", "changed")
    else:
        other = dataclasses.replace(scenario, controlled=["gamer", "neighbour"])
    assert lookup(tmp_path, other, settings) is None
    load_or_tune(other, settings, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tiny-*.json"))) == 2


def test_a_stale_entry_is_tuned_again(tmp_path, scenario):
    # An entry whose recorded score its plans no longer reach (the simulator, a baseline or a neighbour
    # changed) is not reused; tuning again overwrites it.
    tuned = load_or_tune(scenario, FEW, cache_dir=tmp_path)
    path = _entry(tmp_path, scenario)
    doc = json.loads(path.read_text())
    doc["training"]["sla_violation_rate"] = tuned.sla_violation_rate + 0.1
    path.write_text(json.dumps(doc))
    assert lookup(tmp_path, scenario, FEW, verify=False) is not None
    assert lookup(tmp_path, scenario, FEW) is None
    assert load_or_tune(scenario, FEW, cache_dir=tmp_path).sla_violation_rate == tuned.sla_violation_rate
    assert json.loads(path.read_text())["training"]["sla_violation_rate"] == tuned.sla_violation_rate


def test_a_mismatching_fingerprint_is_refused(tmp_path, scenario):
    load_or_tune(scenario, FEW, cache_dir=tmp_path)
    path = _entry(tmp_path, scenario)
    doc = json.loads(path.read_text())
    doc["fingerprints"]["gamer"] = "E=[];C=[]"
    path.write_text(json.dumps(doc))
    assert lookup(tmp_path, scenario, FEW, verify=False) is None
