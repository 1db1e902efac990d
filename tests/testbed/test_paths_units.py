"""Scheduled path events on the testbed without root: the schedule, the planned operations, the step at which the
backend wrapper applies them, the reroute policy and the failover summary and report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from shaping.config import PathEventConfig
from shaping.control import Observed, build_observed
from shaping.spec import ClassMetrics, HostMetrics, ObservationLayout, PathMetrics, ShapingPlan, TenantSpec
from shaping.testbed import scenario as S
from shaping.testbed.failover import FAIL_LOSS, RECOVER_HOLD, on_path, reroute_policy, summarize
from shaping.testbed.paths import DownOp, PathState, RateOp, ScheduledPaths, path_schedule, plan_path_ops
from shaping.testbed.report import markdown_report
from shaping.testbed.topology import (
    ROUTER_BLACKHOLE_TABLE,
    ROUTER_DOWN_PRIORITY,
    TestbedError,
    TopologyConfig,
    bottleneck_limit,
    names,
)

TOPO = TopologyConfig(prefix="fsu", subnet_base=90)
NM = names(TOPO)


def scenario(*events: PathEventConfig) -> Any:
    return S.testbed_scenario(TOPO, S.Workload(), path_events=list(events), control_interval_ms=200.0)


def test_schedule_follows_the_simulators_tables():
    sc = scenario(
        PathEventConfig(path=NM.tenant_links[0], start_step=3, end_step=6, capacity_factor=0.0),
        PathEventConfig(path=NM.tenant_links[1], start_step=2, end_step=8, capacity_factor=0.5),
        PathEventConfig(path=NM.tenant_links[1], start_step=4, end_step=5, capacity_factor=0.5),
    )
    sched = path_schedule(sc)
    assert sched.state(0) == (PathState(), PathState())
    assert sched.state(3) == (PathState(False), PathState(True, 0.5))
    assert sched.state(4)[1] == PathState(True, 0.25)  # overlapping degradations multiply
    assert sched.state(6) == (PathState(), PathState(True, 0.5))
    assert sched.state(10_000) == sched.state(8) == (PathState(), PathState())
    assert sched.changes == [2, 3, 4, 5, 6, 8]
    assert [s.label for s in sched.state(4)] == ["down", "degraded x0.25"]
    assert scenario(PathEventConfig(path=NM.tenant_links[0], start_step=0, capacity_factor=0.0)).path_events
    assert path_schedule(scenario(PathEventConfig(path=NM.tenant_links[0], capacity_factor=0.0))).changes == [0]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (PathEventConfig(path=NM.tenant_links[0], extra_delay_ms=20.0), "cannot add delay"),
        (PathEventConfig(path=NM.tenant_links[0], loss=0.3), "no partial loss"),
        (PathEventConfig(path="eth7", capacity_factor=0.0), "unknown path"),
    ],
)
def test_events_the_testbed_cannot_realize_are_refused(event, message):
    with pytest.raises((TestbedError, ValueError), match=message):
        path_schedule(scenario(event))


def test_events_with_loss_one_take_the_path_down():
    sched = path_schedule(scenario(PathEventConfig(path=NM.tenant_links[1], start_step=1, loss=1.0)))
    assert sched.state(1)[1] == PathState(False)


def test_planned_operations_fail_first_and_return_at_the_new_rate():
    up, down, half = PathState(), PathState(False), PathState(True, 0.5)
    assert plan_path_ops(TOPO, None, (up, up)) == []
    ops = plan_path_ops(TOPO, (up, half), (down, up))
    limit = bottleneck_limit(TOPO.paths[1])
    assert ops[0] == DownOp(0, NM.router_in[0], True, ROUTER_DOWN_PRIORITY)
    assert isinstance(ops[1], RateOp) and ops[1].interface == NM.router_out[1] and ops[1].rate_mbps == 30.0
    assert ops[1].limit == limit  # the buffer keeps its size in bytes
    back = plan_path_ops(TOPO, (down, up), (half, up))
    assert [type(o) for o in back] == [RateOp, DownOp] and back[0].rate_mbps == 15.0  # type: ignore[attr-defined]
    assert back[1] == DownOp(0, NM.router_in[0], False, ROUTER_DOWN_PRIORITY)


@dataclass
class FakeIpr:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    closed: bool = False

    def link_lookup(self, ifname: str) -> list[int]:
        return [7]

    def rule(self, cmd: str, **kw: Any) -> None:
        self.calls.append((cmd, kw["iifname"], kw["priority"], kw["table"]))

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeTestbed:
    cfg: TopologyConfig = TOPO
    handle: FakeIpr = field(default_factory=FakeIpr)

    @property
    def names(self) -> Any:
        return NM

    def ipr(self, ns: str) -> FakeIpr:
        assert ns == NM.router_ns
        return self.handle


class FakeBackend:
    def __init__(self, spec: TenantSpec, log: list[str], ipr: FakeIpr) -> None:
        self._spec, self.log, self.ipr, self.closed = spec, log, ipr, False

    @property
    def spec(self) -> TenantSpec:
        return self._spec

    def observe(self) -> Observed:
        self.log.append(f"observe after {len(self.ipr.calls)} rule changes")
        c, v = len(self._spec.classes), len(self._spec.vms)
        z = torch.zeros(c)
        return build_observed(ObservationLayout(self._spec), ClassMetrics(*[z] * 8),
                              HostMetrics(torch.zeros(v), torch.zeros(v)), 0.0, 0.2)  # fmt: skip

    def apply(self, plan: ShapingPlan) -> None:
        self.log.append("apply")

    def close(self) -> None:
        self.closed = True


def test_the_wrapper_applies_step_k_before_the_observe_that_opens_it():
    sc = scenario(PathEventConfig(path=NM.tenant_links[0], start_step=2, end_step=4, capacity_factor=0.0))
    spec = S.testbed_spec(TOPO, S.Workload())
    tb = FakeTestbed()
    log: list[str] = []
    inner = FakeBackend(spec, log, tb.handle)
    w = ScheduledPaths(inner, tb, path_schedule(sc), clock=lambda: 1.0)  # type: ignore[arg-type]
    seen = [w.observe() for _ in range(5)]
    # The failure is added before the observe that closes interval 1 (so all of interval 2 is failed),
    # removed before the one that closes interval 3.
    assert log == ["observe after 0 rule changes", "observe after 1 rule changes", "observe after 1 rule changes",
                   "observe after 2 rule changes", "observe after 2 rule changes"]  # fmt: skip
    assert [o.info["step"] for o in seen] == [0, 1, 2, 3, 4]
    assert [o.info["path_state"][0] for o in seen] == ["up", "up", "down", "down", "up"]
    rule = (NM.router_in[0], ROUTER_DOWN_PRIORITY, ROUTER_BLACKHOLE_TABLE)
    assert tb.handle.calls == [("add", *rule), ("del", *rule)]
    assert [c["step"] for c in w.changes] == [2, 4]
    w.close()
    assert inner.closed and tb.handle.closed


def test_a_path_down_at_close_is_restored():
    sc = scenario(PathEventConfig(path=NM.tenant_links[1], start_step=1, capacity_factor=0.0))
    tb = FakeTestbed()
    spec = S.testbed_spec(TOPO, S.Workload())
    w = ScheduledPaths(FakeBackend(spec, [], tb.handle), tb, path_schedule(sc))  # type: ignore[arg-type]
    w.observe()
    w.close()
    assert [c[0] for c in tb.handle.calls] == ["add", "del"]


def _observed(spec: TenantSpec, loss0: float) -> Observed:
    c, v, p = len(spec.classes), len(spec.vms), len(spec.paths)
    z = torch.zeros(c)
    paths = PathMetrics(torch.zeros(p), torch.tensor([loss0, 0.0]), torch.zeros(p))
    return build_observed(ObservationLayout(spec), ClassMetrics(*[z] * 8), HostMetrics(torch.zeros(v), torch.zeros(v)),
                          0.0, 0.2, paths=paths)  # fmt: skip


def test_reroute_policy_leaves_a_lossy_path_and_returns_after_a_hold():
    spec = S.testbed_spec(TOPO, S.Workload())
    policy = reroute_policy(spec)
    losses = [0.0, 0.2, 1.0, 1.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.05, 0.0]
    paths = [policy.decide(_observed(spec, x)).plan.classes[0].path for x in losses]
    assert FAIL_LOSS == 0.5 and RECOVER_HOLD == 3
    # leaves when loss > 0.5; back after three intervals in a row below 0.1 (the 0.3 restarts the count)
    assert paths == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert all(c.path == 1 for c in on_path(S.shaped_plan(spec), 1).classes)


def test_summary_and_report_of_a_failover():
    def row(k: int, loss0: float, path: int, state: str) -> dict[str, Any]:
        return {"step": k, "t_s": 0.2 * k, "path_state": [state, "up"], "class_path": [path] * 4,
                "probe_loss": [loss0, 0.0], "probe_delay_ms": [60.0 if loss0 else 0.2, 0.2],
                "path_source": ["probe", "probe"], "gaming_echoed": 1.0, "mode": "adaptive"}  # fmt: skip

    rows = [row(0, 0.0, 0, "up"), row(1, 0.6, 0, "up"), row(2, 0.0, 0, "up"), row(3, 1.0, 0, "down"),
            row(4, 1.0, 1, "down"), row(5, 0.3, 1, "up"), row(6, 0.0, 1, "up"), row(7, 0.0, 0, "up")]  # fmt: skip
    s = summarize(rows, fail_step=3, recover_step=5)
    assert s == {"false_detections": [1], "detected_step": 3, "rerouted_step": 4, "loss_at_fail_step": 1.0,
                 "recovered_step": 6, "returned_step": 7}  # fmt: skip
    s["gaming_echoed_after_reroute_min"] = 1.0
    res = {"policy": "reroute", "interval_s": 0.2, "fail_step": 3, "recover_step": 5, "summary": s,
           "sim_summary": s, "sim_intervals": [{"step": 3, "probe_loss": [1.0, 0.0], "class_path": [0] * 4}],
           "path_changes": [{"step": 3, "ops": ["iif fsu-r0 blackholed"], "apply_s": 0.001}],
           "intervals": rows, "passed": False}  # fmt: skip
    md = markdown_report({"settings": {}, "checks": {"failover": res}})
    assert "## failover: FAILED" in md
    line = "| 3 | 0.60 | down / up | 0000 | 1.00 / 0.00 | 60.0 / 0.2 | probe / probe | 1.00 | adaptive | 1.00 / 0.00 |"
    assert line + " 0000 |" in md
    assert "step 3: iif fsu-r0 blackholed (1.0 ms)" in md
