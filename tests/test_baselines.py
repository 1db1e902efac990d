"""The static baselines: valid plans, routed by assign_paths over every path the scenario has, each
keeping its own marking and rates; fq_codel's shapers follow the paths it uses."""

from __future__ import annotations

from functools import cache

import pytest

from shaping.baselines import BASELINES, EF, SHAPER_HEADROOM, fq_codel_plan, static_priority_plan
from shaping.config import ScenarioConfig
from shaping.path_assignment import assign_paths, latency_sensitive, path_shares
from shaping.sim.scenarios import available_scenarios, load_scenario
from shaping.spec import TenantSpec, scenario_specs
from tests.path_scenarios import four_paths


@cache
def _specs(name: str) -> list[TenantSpec]:
    """Every tenant's spec of a shipped scenario or of four_paths, loaded once (YAML validation is slow)."""
    scenario: ScenarioConfig = four_paths() if name == "four_paths" else load_scenario(name)
    return scenario_specs(scenario)


def _spec(scenario: str, tenant: str) -> TenantSpec:
    return next(s for s in _specs(scenario) if s.name == tenant)


@pytest.mark.parametrize("scenario", [*available_scenarios(), "four_paths"])
@pytest.mark.parametrize("baseline", sorted(BASELINES))
def test_plans_validate_and_take_the_assigned_paths(baseline, scenario):
    for spec in _specs(scenario):
        plan = BASELINES[baseline].plan(spec)
        plan.validate(spec)
        assert tuple(c.path for c in plan.classes) == assign_paths(spec)


@pytest.mark.parametrize("baseline", sorted(BASELINES))
def test_every_baseline_uses_several_paths_when_there_are_several(baseline):
    for spec in _specs("default"):
        assert {c.path for c in BASELINES[baseline].plan(spec).classes} == {0, 1}
    acme = _spec("four_paths", "acme")
    assert {c.path for c in BASELINES[baseline].plan(acme).classes} == {0, 1, 2, 3}


@pytest.mark.parametrize("scenario", ["default", "default_heldout_paths", "edge_gaming", "datacenter"])
@pytest.mark.parametrize("baseline", sorted(BASELINES))
def test_interactive_classes_sit_on_the_lowest_delay_path(baseline, scenario):
    for spec in _specs(scenario):
        fastest = min(range(len(spec.paths)), key=lambda p: spec.path_delay_ms[p])
        plan = BASELINES[baseline].plan(spec)
        for tc, c in zip(spec.classes, plan.classes, strict=True):
            if latency_sensitive(tc, spec):
                assert c.path == fastest, (spec.name, tc.name)


@pytest.mark.parametrize("baseline", sorted(BASELINES))
def test_one_path_keeps_every_class_on_path_0(baseline):
    for spec in _specs("single_path"):
        assert {c.path for c in BASELINES[baseline].plan(spec).classes} == {0}


def test_fq_codel_with_one_path_shapes_to_95_percent_of_the_bottleneck_share():
    for spec in _specs("single_path"):
        plan = fq_codel_plan(spec)
        root = SHAPER_HEADROOM * spec.bottleneck_share_mbps
        flows = sum(tc.flows for tc in spec.classes)
        assert plan.root_mbps == pytest.approx(root)
        for tc, c in zip(spec.classes, plan.classes, strict=True):
            assert c.ceil_mbps == pytest.approx(root)
            assert c.rate_mbps == pytest.approx(max(root * tc.flows / flows, 0.01 * spec.cap_mbps))


@pytest.mark.parametrize("scenario", ["default", "default_heldout_neighbours", "four_paths"])
def test_fq_codel_shapes_each_used_path_to_95_percent_of_its_share(scenario):
    for spec in _specs(scenario):
        plan = fq_codel_plan(spec)
        shares = path_shares(spec)
        used = {c.path for c in plan.classes}
        shaper = {p: SHAPER_HEADROOM * shares[p] for p in used}
        assert plan.root_mbps == pytest.approx(min(sum(shaper.values()), spec.cap_mbps))
        for p in used:
            on_p = [c for c in plan.classes if c.path == p]
            assert all(c.ceil_mbps == pytest.approx(shaper[p]) for c in on_p)
            assert sum(c.rate_mbps for c in on_p) == pytest.approx(shaper[p], rel=0.05)  # MIN_SHARE floors
    gameco = _spec("default", "gameco")
    assert fq_codel_plan(gameco).root_mbps == pytest.approx(0.95 * (50.0 + 25.0))


def test_static_priority_keeps_its_marking_on_the_new_paths():
    plan = static_priority_plan(_spec("default", "gameco"))
    game, web, video, backup = plan.classes
    assert (game.dscp, game.priority, game.path) == (EF, 0, 0)
    assert (backup.dscp, backup.priority, backup.path, backup.rate_mbps) == (0, 3, 1, 10.0)
    assert (web.dscp, video.dscp) == (18, 34)


def test_greedy_premium_stays_selfish_on_every_path():
    plan = BASELINES["greedy_premium"].plan(_spec("default", "gameco"))
    assert all(c.dscp == EF and c.priority == 0 for c in plan.classes)
    assert {c.path for c in plan.classes} == {0, 1}
