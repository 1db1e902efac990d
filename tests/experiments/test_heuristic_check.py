"""experiments.heuristic_check: a tiny run of the entry point, and the events it adds to hand-written scenarios."""

from __future__ import annotations

import json

from experiments.heuristic_check import EVENTS, main, with_event
from shaping.sim.events import event_kinds
from shaping.sim.scenarios import load_scenario


def test_events_added_to_a_handwritten_scenario():
    base = load_scenario("default")
    for kind in EVENTS:
        sc = with_event(base, kind)
        assert sc.name == f"default+{kind}" and kind in event_kinds(sc) and kind not in event_kinds(base)
    assert not base.path_events and not base.load_events  # the loaded scenario is left alone


def test_a_tiny_comparison(tmp_path, capsys):
    out = tmp_path / "rates.json"
    assert main(["--scenario", "heldout_wan_failure_s1", "--seeds", "1", "--steps", "4", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| heldout_wan_failure_s1 |" in table and "| mean |" in table
    rates = json.loads(out.read_text())["heldout_wan_failure_s1"]
    assert set(rates) == {"adaptive_heuristic", "fifo", "static_priority", "fair_share", "fq_codel", "greedy_premium"}
