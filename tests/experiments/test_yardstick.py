"""The benchmark's summary on hand-made numbers: floor, geometric mean, references, won/tied/lost, worst, groups."""

from __future__ import annotations

import math

import pytest

from experiments.yardstick import (
    annotate,
    best_member,
    floored_ratio,
    geometric_mean,
    heuristic_sanity,
    scenario_groups,
    summarize,
    summarize_policy,
    tuned_sanity,
)

FLOOR = 0.005


def _row(v: float, u: float, nbr: float = 0.0) -> dict[str, object]:
    return {"applicable": True, "sla_violation_rate": v, "utilization": u, "neighbour_sla_violation_rate": nbr}


NA = {"applicable": False, "reason": "controls only ['x']"}


def _scenarios() -> dict[str, dict[str, object]]:
    """Yardstick a, b (a the only static member); p the policy under test."""
    return {
        # p has no violation, the best member (b) 5%: a win by a ratio of 0.005 / 0.055.
        "s_fail": {"events": ["failure", "diurnal"], "results": {
            "a": _row(0.10, 0.80), "b": _row(0.05, 0.90, nbr=0.2), "p": _row(0.0, 0.85, nbr=0.1)}},
        # Nobody violates anything: a tie at ratio 1; b is the reference (same violations, higher utilization).
        "s_calm": {"events": [], "results": {"a": _row(0.0, 0.50), "b": _row(0.0, 0.60), "p": _row(0.0, 0.60)}},
        # p loses to a: (0.395 + 0.005) / (0.2 + 0.005).
        "s_crowd": {"events": ["flash_crowd"], "results": {
            "a": _row(0.20, 0.70), "b": _row(0.30, 0.70), "p": _row(0.395, 0.35)}},
        # p cannot run here: the scenario does not count for it.
        "s_na": {"events": ["failure"], "results": {"a": _row(0.5, 0.5), "b": _row(0.5, 0.5), "p": NA}},
    }  # fmt: skip


def test_floored_ratio_and_geometric_mean_by_hand():
    assert floored_ratio(0.0, 0.0, FLOOR) == 1.0
    assert floored_ratio(0.0, 0.05, FLOOR) == pytest.approx(1 / 11)
    assert floored_ratio(0.095, 0.0, FLOOR) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        floored_ratio(0.1, 0.0, 0.0)
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert geometric_mean([0.5, 2.0, 1.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        geometric_mean([1.0, 0.0])


def test_scenario_groups():
    assert scenario_groups([]) == ["all"]
    assert scenario_groups(["diurnal"]) == ["all", "events", "diurnal"]  # a diurnal curve is no disruption
    # Arrival and departure are groups of their own, not "events".
    assert scenario_groups(["arrival", "departure"]) == ["all", "arrival", "departure"]
    assert scenario_groups(["flash_crowd", "failure"]) == ["all", "events", "disruptions", "failure", "flash_crowd"]


def test_best_member_ties_and_exclusion():
    rows = _scenarios()["s_calm"]["results"]
    assert best_member(rows, ["a", "b"]) == "b"  # equal violations: the higher utilization
    assert best_member(rows, ["a", "b"], exclude="b") == "a"
    assert best_member({"a": _row(0.1, 0.5), "c": _row(0.1, 0.5)}, ["c", "a"]) == "c"  # then the yardstick's order
    assert best_member({"a": NA}, ["a"]) is None
    assert best_member(rows, ["b"], exclude="b") is None


def test_policy_summary_arithmetic():
    s = summarize_policy("p", _scenarios(), ["a", "b"], ["a"], FLOOR)
    assert (s.scenarios, s.applicable) == (4, 3)
    ratios = {"s_fail": 0.005 / 0.055, "s_calm": 1.0, "s_crowd": 0.4 / 0.205}
    c = s.vs_yardstick["all"]
    assert c.scenarios == 3
    assert c.geomean_ratio == pytest.approx(math.prod(ratios.values()) ** (1 / 3))
    assert (c.won, c.tied, c.lost) == (1, 1, 1)
    assert c.worst_ratio == pytest.approx(ratios["s_crowd"]) and c.worst_scenario == "s_crowd"
    assert c.utilization_ratio == pytest.approx((0.85 / 0.90 * 1.0 * 0.35 / 0.70) ** (1 / 3))
    assert c.neighbour_sla_violation_rate == pytest.approx(0.1 / 3)
    assert c.reference_neighbour_sla_violation_rate == pytest.approx(0.2 / 3)
    # Groups: "events" is s_fail and s_crowd; s_na's failure does not count for p.
    ev = s.vs_yardstick["events"]
    assert ev.scenarios == 2
    assert ev.geomean_ratio == pytest.approx(math.sqrt(ratios["s_fail"] * ratios["s_crowd"]))
    assert (s.vs_yardstick["failure"].scenarios, s.vs_yardstick["failure"].won) == (1, 1)
    assert s.vs_yardstick["flash_crowd"].lost == 1
    assert set(s.vs_yardstick) == {"all", "events", "disruptions", "failure", "flash_crowd", "diurnal"}
    assert s.vs_yardstick["disruptions"].geomean_ratio == ev.geomean_ratio  # here the same two scenarios
    # Against the static member a only: s_fail's reference is a (10%), s_calm's too (a's 0, a tie).
    st = s.vs_static["all"]
    assert st.geomean_ratio == pytest.approx((0.005 / 0.105 * 1.0 * ratios["s_crowd"]) ** (1 / 3))
    assert (st.won, st.tied, st.lost) == (1, 1, 1)


def test_tie_tolerance_turns_near_misses_into_ties():
    s = summarize_policy("p", _scenarios(), ["a", "b"], ["a"], FLOOR, tie=0.06)
    c = s.vs_yardstick["all"]
    assert (c.won, c.tied, c.lost) == (0, 2, 1)


def test_a_member_is_judged_against_the_others():
    out = summarize(_scenarios(), ["p", "a", "b"], ["a", "b"], ["a"], FLOOR)
    b = out["b"].vs_yardstick["all"]  # b against a alone on every scenario it runs on
    assert out["b"].applicable == 4 and b.scenarios == 4
    assert b.worst_scenario == "s_crowd" and b.worst_ratio == pytest.approx(0.305 / 0.205)
    assert (b.won, b.tied, b.lost) == (1, 2, 1)
    # a is the only static member: it has no static reference at all.
    assert out["a"].vs_static["all"].scenarios == 0 and out["a"].vs_static["all"].geomean_ratio is None


def test_annotate_writes_references_and_ratios():
    scenarios = _scenarios()
    annotate(scenarios, ["a", "b"], ["a"], FLOOR)
    fail = scenarios["s_fail"]
    assert fail["best_yardstick"] == "b" and fail["best_static"] == "a"
    rows = fail["results"]
    assert rows["p"]["reference"] == "b" and rows["p"]["ratio"] == pytest.approx(1 / 11)
    assert rows["b"]["reference"] == "a" and rows["b"]["ratio"] == pytest.approx(0.055 / 0.105)
    assert "ratio" not in scenarios["s_na"]["results"]["p"]


def test_heuristic_sanity_compares_with_the_best_baseline_where_a_path_fails():
    # Only s_fail has a failure where p applies (s_na: p not applicable): p 0 against the better baseline b 5%.
    out = heuristic_sanity(_scenarios(), "p", ["a", "b"], FLOOR)
    c = out["comparison"]
    assert (c["scenarios"], c["won"], c["lost"], c["worst_scenario"]) == (1, 1, 0, "s_fail")
    assert c["geomean_ratio"] == pytest.approx(FLOOR / 0.055)
    assert out["holds"] is True
    # Against a alone on the flash crowd: p 39.5% against a's 20%, it does not hold.
    crowd = heuristic_sanity(_scenarios(), "p", ["a"], FLOOR, group="flash_crowd")
    assert crowd["comparison"]["lost"] == 1 and crowd["holds"] is False
    assert heuristic_sanity(_scenarios(), "p", ["a"], FLOOR, group="arrival")["holds"] is False


def test_tuned_sanity_lists_every_scenario_where_a_baseline_beats_the_tuned_plan():
    out = tuned_sanity(_scenarios(), "p", ["a", "b"])
    assert (out["scenarios"], out["at_least_as_good"]) == (3, 2)
    assert out["exceptions"] == [{"scenario": "s_crowd", "p": 0.395, "best_baseline": "a", "baseline_rate": 0.2}]
    assert out["holds"] is False
    # Within the tie tolerance the tuned plan counts as as good.
    assert tuned_sanity(_scenarios(), "p", ["a", "b"], tie=0.2)["holds"] is True
