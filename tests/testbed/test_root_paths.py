"""Root only: scheduled path events on the testbed reach the per-path observation at their step; the failover check.

These tests build their own testbed (prefix fstp, 10.200.80-84.0/24), apart from the session testbed of
the other root tests, since they take its paths down.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from shaping.config import PathEventConfig
from shaping.control import StaticPolicy
from shaping.testbed import scenario as S
from shaping.testbed.checks import Bench
from shaping.testbed.failover import check_failover, on_path, run_scheduled
from shaping.testbed.paths import PathState, apply_path_ops, plan_path_ops
from shaping.testbed.topology import (
    ROUTER_BLACKHOLE_TABLE,
    ROUTER_DOWN_PRIORITY,
    TopologyConfig,
    root_skip_reason,
    testbed as build_testbed,
)

pytestmark = pytest.mark.root

PATHS_TOPOLOGY = TopologyConfig(prefix="fstp", subnet_base=80)
INTERVAL_MS = 200.0


@pytest.fixture(scope="module")
def pbench() -> Iterator[Bench]:
    reason = root_skip_reason(("ip", "tc", "nft", "ethtool"))
    if reason is not None:
        pytest.skip(reason)
    with build_testbed(PATHS_TOPOLOGY) as built:
        yield Bench.open(built)


def _tbf_rate_bytes(bench: Bench, path: int) -> int:
    nm = bench.tb.names
    with bench.tb.ipr(nm.router_ns) as ipr:
        idx = ipr.link_lookup(ifname=nm.router_out[path])[0]
        root = next(q for q in ipr.get_qdiscs(index=idx) if q["parent"] == 0xFFFFFFFF)
        return int(root.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"])


def _down_rules(bench: Bench) -> list[int]:
    with bench.tb.ipr(bench.tb.names.router_ns) as ipr:
        rules = ipr.get_rules(family=socket.AF_INET)
        return sorted(int(r.get_attr("FRA_PRIORITY")) for r in rules
                      if (r.get_attr("FRA_TABLE") or r["table"]) == ROUTER_BLACKHOLE_TABLE)  # fmt: skip


def test_path_ops_change_the_router_and_restore_it(pbench: Bench) -> None:
    cfg = pbench.tb.cfg
    bad = (PathState(True, 0.25), PathState(False))
    apply_path_ops(pbench.tb, plan_path_ops(cfg, None, bad))
    try:
        assert _tbf_rate_bytes(pbench, 0) == int(0.25 * cfg.paths[0].capacity_mbps * 1e6 / 8)
        assert _down_rules(pbench) == [ROUTER_DOWN_PRIORITY + 1]
    finally:
        apply_path_ops(pbench.tb, plan_path_ops(cfg, bad, (PathState(), PathState())))
    assert _tbf_rate_bytes(pbench, 0) == int(cfg.paths[0].capacity_mbps * 1e6 / 8)
    assert _down_rules(pbench) == []


def test_probes_see_a_scheduled_failure_in_its_first_interval(pbench: Bench) -> None:
    """Path 1 (which carries no class) fails at step 6 and comes back at step 12; path 0 is degraded to 20%
    from step 3 to 9. The per-path observation shows path 1 lost from step 6 to 11 and path 0 clean."""
    nm = pbench.tb.names
    events = [
        PathEventConfig(path=nm.tenant_links[1], start_step=6, end_step=12, capacity_factor=0.0),
        PathEventConfig(path=nm.tenant_links[0], start_step=3, end_step=9, capacity_factor=0.2),
    ]
    scenario = S.testbed_scenario(pbench.tb.cfg, pbench.work, path_events=events, control_interval_ms=INTERVAL_MS)
    plan = on_path(S.shaped_plan(pbench.spec), 0)
    res = run_scheduled(pbench, scenario, lambda spec: StaticPolicy(spec, plan), steps=16, warmup_s=0.5)
    rows = {r["step"]: r for r in res.rows}
    assert [c["step"] for c in res.changes] == [3, 6, 9, 12], res.changes
    assert [rows[k]["path_state"][1] for k in (5, 6, 11, 12)] == ["up", "down", "down", "up"]
    report = {k: (r["probe_loss"], r["path_source"], r["probes"]) for k, r in rows.items()}
    for k in range(6, 12):  # every interval of the failure, from its first: (nearly) all probes decided are lost
        assert rows[k]["path_source"][1] == "probe", report
        assert rows[k]["probe_loss"][1] >= 0.9 and rows[k]["obs_path_loss"][1] >= 0.9, (k, report)
    # Its delay is the wait of the probes declared lost (>= the 50 ms timeout). The last failed interval is
    # left out: it ends with the milliseconds after the path's return, in which an answer may come.
    for k in range(6, 11):
        assert rows[k]["probe_delay_ms"][1] >= 40.0, report
    # Before the failure and from the interval after the recovery: (nearly) nothing lost. The margin of
    # 0.2 admits one probe in five late past the 50 ms timeout on a loaded host; none was seen.
    for k in [*range(1, 6), *range(13, 16)]:
        assert rows[k]["probe_loss"][1] <= 0.2, report
    # The first recovered interval still counts the probes sent in the failure's last timeout (50 ms of 200).
    assert rows[12]["probe_loss"][1] < 0.5, report
    # Path 0 is degraded, not failed: the probes (26 kbit/s) get through its 6 Mbit/s.
    assert all(r["probe_loss"][0] <= 0.2 for r in res.rows[1:]), report


def test_failover_reroutes_in_the_interval_after_the_failure(pbench: Bench) -> None:
    gaming = [f for f in S.flows(pbench.work) if f.kind == "gaming"]
    res = check_failover(pbench, steps=26, fail_step=8, recover_step=16, flows=gaming, warmup_s=0.5)
    s = res["summary"]
    assert res["passed"], (s, [(r["step"], r["probe_loss"], r["class_path"]) for r in res["intervals"]])
    assert s["detected_step"] == 8 and s["rerouted_step"] == 9
    assert s["returned_step"] is not None and s["returned_step"] <= 16 + 1 + 3 + 1
    # The simulator runs the same event under the same policy: same steps.
    assert res["sim_summary"]["detected_step"] == 8 and res["sim_summary"]["rerouted_step"] == 9
    assert res["sim_summary"]["recovered_step"] == 16
