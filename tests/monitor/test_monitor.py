"""The monitor turns counters and samples into exactly the spec's ClassMetrics/HostMetrics and Observation."""

from __future__ import annotations

import pytest
import torch

from shaping.baselines import static_priority_plan
from shaping.monitor import AppMetrics, ClassCounters, InterfaceCounters, Monitor, MonitorConfig, SocketRtt
from shaping.spec import ObservationLayout
from tests.monitor.conftest import CLASSIDS, Clock, FakeStats


class FakeRtt:
    def __init__(self, socks: list[SocketRtt]) -> None:
        self.socks = socks

    def read(self) -> list[SocketRtt]:
        return list(self.socks)

    def close(self) -> None:
        pass


class FakeProbes:
    def __init__(self, samples: dict[int, list[float]]) -> None:
        self.s = samples

    def samples(self, since: float) -> dict[int, list[float]]:
        return self.s


def test_rates_loss_and_backlog_from_counter_deltas(spec, clock: Clock):
    stats = FakeStats({CLASSIDS[0]: ClassCounters(bytes=1000, packets=10)}, {"p0": InterfaceCounters(tx_bytes=0)})
    mon = Monitor(spec, stats, CLASSIDS, clock=clock)
    # 0.5 s later: game sent 625_000 bytes (10 Mbit/s) in 500 packets, dropped 100 packets (of 1250 B each);
    # backup sent 1_250_000 bytes (20 Mbit/s) and its queue grew to 62_500 bytes; trades never existed
    stats.classes = {
        CLASSIDS[0]: ClassCounters(bytes=626_000, packets=510, drops=100, overlimits=7),
        CLASSIDS[2]: ClassCounters(bytes=1_250_000, packets=1000, backlog_bytes=62_500, qlen=50),
    }
    stats.ifaces = {"p0": InterfaceCounters(tx_bytes=1_875_000)}
    clock.t += 0.5
    o = mon.sample()
    m = o.metrics
    assert o.interval_s == pytest.approx(0.5)
    assert m.delivered_mbps.tolist() == pytest.approx([10.0, 0.0, 20.0])
    assert m.offered_mbps.tolist() == pytest.approx([12.0, 0.0, 21.0])  # + 125_000 dropped B, + 62_500 B queued
    assert m.loss.tolist() == pytest.approx([2.0 / 12.0, 0.0, 0.0])
    assert m.demand_mbps.tolist() == pytest.approx(m.offered_mbps.tolist())
    assert o.info["missing_classes"] == ["trades"]
    assert o.info["overlimits"] == [7, 0, 0]
    assert o.info["interfaces"]["p0"]["tx_mbps"] == pytest.approx(30.0)
    # the observation is the spec's one layout of these metrics
    assert torch.equal(o.obs, ObservationLayout(spec).build(m, o.host, o.paths, o.plan))
    assert o.obs.shape == (ObservationLayout(spec).size,)


def test_counter_reset_counts_from_zero(spec, clock: Clock):
    stats = FakeStats({CLASSIDS[0]: ClassCounters(bytes=10_000_000, packets=9000)})
    mon = Monitor(spec, stats, CLASSIDS, clock=clock)
    stats.classes = {CLASSIDS[0]: ClassCounters(bytes=125_000, packets=100)}  # the class was recreated
    clock.t += 1.0
    assert mon.sample().metrics.delivered_mbps[0].item() == pytest.approx(1.0)


def test_delay_sources_in_order_of_preference(spec, clock: Clock):
    plan = static_priority_plan(spec)
    stats = FakeStats({CLASSIDS[2]: ClassCounters()})
    socks = [
        SocketRtt("10.200.36.1", 40000, "10.200.99.2", 9000, rtt_ms=20.0, rttvar_ms=4.0, min_rtt_ms=10.0),
        SocketRtt("10.200.36.1", 40001, "10.200.99.2", 9000, rtt_ms=30.0, rttvar_ms=2.0, min_rtt_ms=12.0),
        SocketRtt("10.200.50.9", 40002, "10.200.99.2", 9000, rtt_ms=500.0, rttvar_ms=1.0, min_rtt_ms=1.0),  # not ours
    ]
    probes = FakeProbes({0: [10.0, 20.0, 30.0, 40.0]})
    mon = Monitor(spec, stats, CLASSIDS, rtt=FakeRtt(socks), probes=probes,  # type: ignore[arg-type]
                  config=MonitorConfig(base_delay_ms=(3.0, 8.0)), clock=clock)  # fmt: skip
    mon.set_plan(plan)
    # backup: 25_000 bytes queued behind its 10 Mbit/s... static rate (0.1 * cap) -> 20 ms sojourn
    stats.classes = {CLASSIDS[2]: ClassCounters(backlog_bytes=25_000)}
    clock.t += 0.1
    m = mon.sample().metrics
    # game: probes, one-way = RTT / 2; p99 interpolated between the two largest samples
    assert m.delay_mean_ms[0].item() == pytest.approx(12.5)
    assert m.delay_p99_ms[0].item() == pytest.approx(0.5 * (30 + 0.97 * 10))
    # trades: TCP_INFO of its two sockets; p99 is the largest per-socket (srtt + z * 1.25 * rttvar) / 2
    assert m.delay_mean_ms[1].item() == pytest.approx(12.5)
    per_socket = [(20 + 2.326 * 1.25 * 4) / 2, (30 + 2.326 * 1.25 * 2) / 2]
    assert m.delay_p99_ms[1].item() == pytest.approx(max(per_socket), rel=1e-5)
    # backup: no samples: base delay of its path + queue sojourn; the static rules route bulk to the
    # second path, away from the interactive classes, so each class's base delay is its own path's
    assert [c.path for c in plan.classes] == [0, 0, 1]
    assert m.base_delay_ms.tolist() == pytest.approx([3.0, 3.0, 8.0])
    assert m.delay_p99_ms[2].item() == pytest.approx(8.0 + 20.0)


def test_base_delay_from_min_rtt_without_configuration(spec, clock: Clock):
    socks = [SocketRtt("10.200.36.1", 1, "10.200.99.2", 9000, 20.0, 1.0, 14.0)]
    mon = Monitor(spec, FakeStats(), CLASSIDS, rtt=FakeRtt(socks), clock=clock)
    clock.t += 0.1
    assert mon.sample().metrics.base_delay_ms.tolist() == pytest.approx([0.0, 7.0, 0.0])


def test_pushed_application_metrics(spec, clock: Clock):
    app = AppMetrics(spec, clock=clock)
    mon = Monitor(spec, FakeStats(), CLASSIDS, app=app, config=MonitorConfig(app_max_age_s=1.0), clock=clock)
    app.ingest('{"class": "game", "app_metric": 0.8, "p99_ms": 33.0}\n{"class": "backup", "demand_mbps": 40}')
    clock.t += 0.1
    m = mon.sample().metrics
    assert m.app_metric.tolist() == pytest.approx([0.8, 1.0, 1.0])
    assert m.delay_p99_ms[0].item() == pytest.approx(33.0)
    assert m.demand_mbps[2].item() == pytest.approx(40.0)
    clock.t += 2.0  # stale: back to defaults
    m = mon.sample().metrics
    assert m.app_metric.tolist() == pytest.approx([1.0, 1.0, 1.0]) and m.demand_mbps[2].item() == 0.0


def test_errors_are_clear(spec, clock: Clock):
    with pytest.raises(ValueError, match="2 class ids for 3 classes"):
        Monitor(spec, FakeStats(), CLASSIDS[:2], clock=clock)
    with pytest.raises(ValueError, match="base_delay_ms has 1 values"):
        Monitor(spec, FakeStats(), CLASSIDS, config=MonitorConfig(base_delay_ms=(1.0,)), clock=clock)
    mon = Monitor(spec, FakeStats(), CLASSIDS, clock=clock)
    with pytest.raises(RuntimeError, match="interval must be > 0"):
        mon.sample()


def test_kernel_backend_over_the_monitor(spec, clock: Clock):
    from shaping.control import KernelBackend

    class Rec:
        def __init__(self) -> None:
            self.plans: list = []
            self.closed = False

        def apply(self, plan):
            self.plans.append(plan)

        def close(self) -> None:
            self.closed = True

    stats = FakeStats()
    enforcer = Rec()
    b = KernelBackend(spec, Monitor(spec, stats, CLASSIDS, clock=clock), enforcer)
    plan = static_priority_plan(spec)
    b.apply(plan)
    assert enforcer.plans == [plan] and b.monitor.plan == plan
    clock.t += 0.1
    assert b.observe().metrics.delivered_mbps.shape == (3,)
    b.close()
    assert enforcer.closed and stats.closed
