"""Root-only: the tenant's plan on real traffic through the namespaced testbed (rates, DSCP, drops, paths)."""

from __future__ import annotations

from pyroute2 import netns

import pytest

from shaping.testbed import checks as C
from shaping.testbed import scenario as S
from shaping.testbed.runner import Flow, run_flows
from shaping.testbed.measure import measure
from shaping.testbed.topology import Testbed, TopologyConfig
from shaping.testbed.topology import testbed as build_testbed

pytestmark = pytest.mark.root


def test_topology_forwards_over_the_bottleneck_and_tears_down(tb: Testbed) -> None:
    flow = Flow("gaming", "gaming", S.GAMING_PORT, {"players": 1})
    run = run_flows(tb, [flow], 1.0)
    m = measure(run, [flow], 0.0)["gaming"]
    assert m.sent == 60 and m.received == 60
    nm = tb.names
    assert run.counter_delta(f"{nm.router_ns}/{nm.router_out[0]}") >= 60 * 162
    assert run.counter_delta(f"{nm.router_ns}/{nm.router_out[1]}") < 1000  # nothing on the second path
    assert tb.qdisc_stats(nm.router_ns, nm.router_out[0])["packets"] >= 60  # through the bottleneck TBF
    # A second testbed with its own prefix leaves nothing behind, also when the body fails.
    other = TopologyConfig(prefix="fstx", subnet_base=70)
    with pytest.raises(RuntimeError, match="boom"), build_testbed(other) as tb2:
        assert tb2.names.tenant_ns in netns.listnetns()
        raise RuntimeError("boom")
    assert not [n for n in netns.listnetns() if n.startswith("fstx-")]


def test_per_class_rates_are_enforced_within_10_percent(bench: C.Bench) -> None:
    res = C.check_rates(bench, duration_s=5.0, warmup_s=1.5)
    assert res["passed"], res


def test_dscp_marks_are_seen_on_the_wire(bench: C.Bench) -> None:
    res = C.check_dscp(bench, duration_s=3.0)
    assert all(res["captured"].get(p) for p in res["expected_dscp"]), res
    assert res["passed"], res


def test_drop_probability_within_binomial_tolerance(bench: C.Bench) -> None:
    res = C.check_drop(bench, drop_prob=0.1, packets=2000, pps=1000.0)
    assert res["passed"], res


def test_path_change_moves_the_class_to_the_second_link(bench: C.Bench) -> None:
    res = C.check_path_change(bench, duration_s=4.0)
    assert res["passed"], res
