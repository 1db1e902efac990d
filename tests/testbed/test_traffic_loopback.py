"""The traffic generators against the sink over loopback (no root needed): counts, timestamps, bounds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from shaping.testbed import traffic
from shaping.testbed.sink import Sink, SinkConfig

GAME, TXN, BULK, PROBE = 47000, 47100, 47200, 47300


def _free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def sink() -> Iterator[Sink]:
    if not all(_free(p, k) for p, k in ((GAME, socket.SOCK_DGRAM), (PROBE, socket.SOCK_DGRAM),
                                        (TXN, socket.SOCK_STREAM), (BULK, socket.SOCK_STREAM))):  # fmt: skip
        pytest.skip("loopback test ports are in use")
    s = Sink(SinkConfig("127.0.0.1", echo_ports=[GAME], count_ports=[PROBE], txn_ports={TXN: 400}, bulk_ports=[BULK]))
    s.start()
    time.sleep(0.2)
    yield s
    s.stop()


def test_gaming_echo_measures_every_packet(sink: Sink) -> None:
    res = traffic.gaming_client("127.0.0.1", GAME, players=2, hz=60, duration_s=0.5)
    assert res.sent == 2 * 30
    assert res.received == res.sent
    assert all(0 <= o <= r for o, r in zip(res.owd_ms, res.rtt_ms, strict=True))
    assert max(res.rtt_ms) < 500
    stats = sink.stop()
    assert stats["ports"][str(GAME)]["packets"] == res.sent
    assert stats["ports"][str(GAME)]["dscp"] == {"0": res.sent}


def test_udp_blast_is_bounded_in_count_and_time(sink: Sink) -> None:
    t0 = time.monotonic()
    assert traffic.udp_blast("127.0.0.1", PROBE, pps=2000, count=300, duration_s=5.0) == 300
    assert traffic.udp_blast("127.0.0.1", PROBE, pps=100, count=10_000, duration_s=0.3) <= 31
    assert time.monotonic() - t0 < 3.0
    time.sleep(0.2)
    assert sink.stop()["ports"][str(PROBE)]["packets"] >= 300


def test_transactions_complete_within_deadline(sink: Sink) -> None:
    res = traffic.transactions_client("127.0.0.1", TXN, rate_hz=200, connections=2, deadline_ms=200, duration_s=0.5)
    assert res.issued > 30
    assert res.completed == res.issued
    assert res.completion_rate > 0.9


def test_bulk_uses_cubic_and_stops_by_itself(sink: Sink) -> None:
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        if "cubic" not in f.read().split():
            pytest.skip("cubic congestion control is not available")
    with socket.socket() as s:
        traffic.set_cubic(s)
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0") == b"cubic"
    t0 = time.monotonic()
    sent = traffic.bulk_client("127.0.0.1", BULK, flows=2, duration_s=0.4)
    assert time.monotonic() - t0 < 3.0
    time.sleep(0.2)
    assert sink.stop()["ports"][str(BULK)]["bytes"] > 0 and sent > 0


def test_durations_are_bounded() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        traffic.gaming_client("127.0.0.1", GAME, duration_s=10_000)
