"""Per-path probes: timeouts, loss and delay per window on fake sockets, the monitor's per-path source, loopback."""

from __future__ import annotations

import socket
import time

import pytest

from shaping.baselines import static_priority_plan
from shaping.monitor import ClassCounters, Monitor, PathProbeConfig, PathProber, PathProbeTarget, PathReflector
from shaping.monitor.pathprobe import PROBE, STAMP
from tests.monitor.conftest import CLASSIDS, Clock, FakeStats


class FakeSocket:
    """Records what is sent; answers are queued by the test."""

    def __init__(self, target: PathProbeTarget) -> None:
        self.target = target
        self.sent: list[bytes] = []
        self.inbox: list[bytes] = []
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        assert addr == (self.target.host, self.target.port)
        self.sent.append(data)
        return len(data)

    def recv(self, n: int) -> bytes:
        if not self.inbox:
            raise BlockingIOError
        return self.inbox.pop(0)

    def close(self) -> None:
        self.closed = True

    def reflect(self, index: int, reflector_ns: int | None = None) -> None:
        """Answer the index-th probe sent (with the reflector's receive time when given)."""
        data = self.sent[index]
        self.inbox.append(data if reflector_ns is None else data + STAMP.pack(reflector_ns))


TARGETS = (PathProbeTarget("10.200.1.1", 5400, "p0"), PathProbeTarget("10.200.1.1", 5400, "p1"))


def prober(clock: Clock, **cfg: object) -> tuple[PathProber, list[FakeSocket]]:
    socks: list[FakeSocket] = []

    def make(t: PathProbeTarget) -> FakeSocket:
        socks.append(FakeSocket(t))
        return socks[-1]

    p = PathProber(TARGETS, PathProbeConfig(**cfg), clock=clock, sockets=make)  # type: ignore[arg-type]
    p.open()
    return p, socks


def test_config_bounds_the_rate_and_checks_values():
    with pytest.raises(ValueError, match="period_s"):
        PathProbeConfig(period_s=0.001)
    with pytest.raises(ValueError, match="min_timeout_s"):
        PathProbeConfig(min_timeout_s=2.0, max_timeout_s=1.0)
    with pytest.raises(ValueError, match="one_way"):
        PathProbeConfig(one_way="guess")
    with pytest.raises(ValueError, match="at least one path"):
        PathProber([])


def test_answers_give_half_rtt_and_the_reflector_clock_one_way(clock: Clock):
    p, socks = prober(clock)
    p.send_round()
    assert [PROBE.unpack(s.sent[0])[:2] for s in socks] == [(0, 1), (1, 1)]
    clock.t += 0.010
    socks[0].reflect(0)
    p.drain()
    w0, w1 = p.take()
    assert (w0.sent, w0.answered, w0.lost) == (1, 1, 0) and w0.loss == 0.0
    assert w0.delay_ms == pytest.approx(5.0)  # half of the 10 ms round trip
    assert w1.answered == 0 and w1.loss is None  # still waiting (no answer yet: timeout is max_timeout_s)
    assert w1.delay_ms == pytest.approx(5.0)  # the longest wait, halved like a round trip

    q, qs = prober(clock, one_way="reflector_clock")
    q.send_round()
    sent_ns = PROBE.unpack(qs[0].sent[0])[2]
    clock.t += 0.010
    qs[0].reflect(0, reflector_ns=sent_ns + 8_000_000)  # 8 ms out, 2 ms back
    q.drain()
    assert q.take()[0].delay_ms == pytest.approx(8.0)


def test_a_path_that_stops_answering_is_lost_after_its_adaptive_timeout(clock: Clock):
    p, socks = prober(clock, min_timeout_s=0.05, rtt_factor=4.0)
    assert p.timeout_s(0) == 1.0  # nothing answered yet: max_timeout_s
    # Five probes answered after 2 ms each: the timeout falls to the 50 ms floor (4 x 2 ms < 50 ms).
    for k in range(5):
        p.send_round()
        clock.t += 0.002
        socks[0].reflect(k)
        socks[1].reflect(k)
        p.drain()
        clock.t += 0.018
    p.take()
    assert p.timeout_s(0) == pytest.approx(0.05)
    # Path 0 fails: ten probes, 20 ms apart, none answered; path 1 keeps answering.
    for k in range(5, 15):
        p.send_round()
        clock.t += 0.002
        socks[1].reflect(k)
        p.drain()
        clock.t += 0.018
        p.sweep()
    w0, w1 = p.take()
    # Sent at 0, 20, ..., 180 ms; taken at 200 ms: those sent up to 150 ms waited >= 50 ms, 2 are pending.
    assert (w0.sent, w0.answered, w0.lost) == (10, 0, 8) and w0.loss == 1.0
    # The longest wait: a probe declared lost at the first sweep past 50 ms (60 ms), halved like a round trip.
    assert w0.delay_ms == pytest.approx(0.5 * 0.060 * 1e3)
    assert (w1.answered, w1.lost) == (10, 0) and w1.delay_ms == pytest.approx(1.0)
    # A late answer to a probe already declared lost is counted as late, not answered.
    socks[0].reflect(5)
    p.drain()
    assert p.take()[0].late == 1


def test_a_growing_queue_raises_the_timeout_instead_of_losing_probes(clock: Clock):
    p, socks = prober(clock, min_timeout_s=0.05, rtt_factor=4.0)
    rtt = 0.002
    for k in range(20):  # the round trip grows by 10 ms per probe, to 192 ms: answered, never lost
        p.send_round()
        clock.t += rtt
        socks[0].reflect(k)
        p.drain()
        clock.t += 0.02
        p.sweep()
        rtt += 0.01
    w0 = p.take()[0]
    assert w0.lost == 0 and w0.answered == 20
    assert p.timeout_s(0) == pytest.approx(4 * 0.192)


def test_an_answer_declares_the_older_unanswered_probes_lost(clock: Clock):
    p, socks = prober(clock, min_timeout_s=0.5, max_timeout_s=1.0)
    for _ in range(3):
        p.send_round()
        clock.t += 0.02
    socks[0].reflect(2)  # the third probe is answered, the first two never: a path keeps order
    p.drain()
    w0 = p.take()[0]
    assert (w0.answered, w0.lost) == (1, 2)
    assert w0.delay_ms == pytest.approx(10.0)  # the answer's 20 ms round trip, halved
    socks[0].reflect(0)
    p.drain()
    assert p.take()[0].late == 1


def test_a_refused_send_leaves_the_probe_to_time_out(clock: Clock):
    p, socks = prober(clock, min_timeout_s=0.05, max_timeout_s=0.1)

    def refuse(data: bytes, addr: tuple[str, int]) -> int:
        raise OSError(101, "Network is unreachable")

    socks[0].sendto = refuse  # type: ignore[method-assign]
    p.send_round()
    clock.t += 0.2
    assert p.take()[0].lost == 1
    p.close()
    assert all(s.closed for s in socks)


def test_monitor_takes_probed_paths_and_falls_back_per_path(spec, clock: Clock):
    stats = FakeStats({CLASSIDS[0]: ClassCounters(bytes=0), CLASSIDS[2]: ClassCounters(bytes=0)})
    p, socks = prober(clock, min_timeout_s=0.05)
    mon = Monitor(spec, stats, CLASSIDS, path_probes=p, clock=clock)
    plan = static_priority_plan(spec)
    mon.set_plan(plan)
    on_p0 = [c for c, cs in enumerate(plan.classes) if cs.path == 0]
    assert on_p0, "the static plan puts classes on path 0"
    # Nothing probed yet (the prober not started): every path from the classes.
    clock.t += 0.1
    assert mon.sample().info["path_source"] == ["classes", "classes"]
    # One interval of 0.2 s: path 0 answers its first 5 probes (sent 0-80 ms) in 4 ms, the next 5 (100-180 ms)
    # never: at 200 ms those sent up to 140 ms waited past the 50 ms timeout. Path 1 answers nothing, and
    # nothing is decided there (its timeout is still 1 s).
    for k in range(10):
        p.send_round()
        clock.t += 0.004
        if k < 5:
            socks[0].reflect(k)
        p.drain()
        clock.t += 0.016
    stats.classes = {CLASSIDS[0]: ClassCounters(bytes=250_000, packets=200)}  # game: 10 Mbit/s in 0.2 s
    o = mon.sample()
    assert o.info["path_source"] == ["probe", "probe"]
    assert o.info["path_probes"][0]["answered"] == 5 and o.info["path_probes"][0]["lost"] == 3
    assert float(o.paths.loss[0]) == pytest.approx(3 / 8)
    # the answers took 2 ms one way, but the probe sent at 160 ms has waited 40 ms: at least 20 ms one way
    assert float(o.paths.delay_ms[0]) == pytest.approx(20.0)
    # delivered over path 0: the classes on it, less what the probes lost
    assert float(o.paths.delivered_mbps[0]) == pytest.approx(10.0 * (1 - 3 / 8), rel=1e-5)
    # path 1: nothing decided yet, so no loss, and the longest wait (200 ms, halved) as its delay
    assert float(o.paths.loss[1]) == 0.0
    assert float(o.paths.delay_ms[1]) == pytest.approx(100.0)
    layout = mon.layout
    i = layout.names.index(f"path_loss[{spec.paths[0]}]")
    assert float(o.obs[i]) == pytest.approx(3 / 8)
    # without a prober every path comes from the classes
    plain = Monitor(spec, FakeStats(), CLASSIDS, clock=clock)
    clock.t += 0.1
    assert plain.sample().info["path_source"] == ["classes", "classes"]
    with pytest.raises(ValueError, match="1 path probe targets for the 2 paths"):
        Monitor(spec, FakeStats(), CLASSIDS, path_probes=PathProber(TARGETS[:1]), clock=clock)
    mon.close()
    assert all(s.closed for s in socks)


def test_probes_and_reflector_on_loopback():
    with PathReflector("127.0.0.1") as r:
        targets = [PathProbeTarget("127.0.0.1", r.port, src="127.0.0.1")]
        p = PathProber(targets, PathProbeConfig(period_s=0.01, one_way="reflector_clock", max_s=5.0)).start()
        try:
            deadline = time.monotonic() + 5.0
            answered = 0
            while time.monotonic() < deadline and answered < 5:
                time.sleep(0.05)
                answered += p.take()[0].answered
        finally:
            p.close()
        assert not p.error
        assert answered >= 5 and r.answered >= 5


def test_probe_socket_is_pinned_and_nonblocking():
    from shaping.monitor.pathprobe import open_probe_socket

    s = open_probe_socket(PathProbeTarget("127.0.0.1", 9, src="127.0.0.1", tos=0xB8))
    try:
        assert s.getblocking() is False
        assert s.getsockname()[0] == "127.0.0.1"
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 0xB8
    finally:
        s.close()


def test_probe_format_matches_the_testbed_sink_echo():
    from shaping.testbed.traffic import ECHO_TRAILER, GAME_HDR

    # The testbed sink's UDP echo answers the first GAME_HDR bytes and its receive time: a path reflector.
    assert GAME_HDR.format == PROBE.format and ECHO_TRAILER.format == STAMP.format
