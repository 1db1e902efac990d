"""Root-only: the simulator's prediction against the testbed's measurement for the same scenario and plans."""

from __future__ import annotations

import math

import pytest

from shaping.testbed import checks as C
from shaping.testbed import simcompare as SC

pytestmark = pytest.mark.root


def test_simulator_against_testbed_reports_the_gap(bench: C.Bench) -> None:
    res = SC.compare_scenario(bench, duration_s=4.0, warmup_s=1.5, sim_steps=40, seeds=2)
    for case in ("no_shaping", "shaped"):
        bulk = res[case]["bulk"]["throughput_mbps"]
        assert bulk["testbed"] > 0 and math.isfinite(bulk["rel_gap"])
        # Both sides see the bottleneck (unshaped) or the tenant's root (shaped) as bulk's limit.
        assert abs(bulk["rel_gap"]) < 0.15, res[case]["bulk"]
        assert res[case]["gaming"]["owd_p99_ms"]["abs_gap"] is not None
    # Both agree on the direction and rough size of the shaping's effect on the gaming tail.
    for side in ("sim", "testbed"):
        plain = res["no_shaping"]["gaming"]["owd_p99_ms"][side]
        shaped = res["shaped"]["gaming"]["owd_p99_ms"][side]
        assert plain > 5 * shaped, (side, plain, shaped)
