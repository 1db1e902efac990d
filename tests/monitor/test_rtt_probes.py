"""Socket-to-class matching, TCP_INFO decoding, and the active probes on loopback."""

from __future__ import annotations

import socket

import pytest

from shaping.monitor import ProbeScheduler, TcpConnectProbe, UdpEchoProbe, UdpEchoServer, class_matcher
from shaping.monitor.rtt import socket_rtt


def test_class_matcher_uses_ports_protocol_and_entity_addresses(spec):
    match = class_matcher(spec)
    assert match("10.200.36.1", 50000, "192.0.2.1", 9000) == 1  # trades: tcp 9000 from the VM
    assert match("192.0.2.1", 9000, "10.200.36.1", 50000) == 1  # the reverse direction too
    assert match("10.200.37.7", 40000, "192.0.2.1", 873) == 2  # backup from the subnet
    assert match("10.200.36.1", 40000, "192.0.2.1", 27015) is None  # game is UDP: no TCP socket belongs to it
    assert match("10.200.99.1", 40000, "192.0.2.1", 9000) is None  # not the tenant's address


class _Msg(dict):
    def __init__(self, attrs, **fields):
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


def test_socket_rtt_decodes_tcp_info():
    info = {"tcpi_rtt": 12500, "tcpi_rttvar": 3000, "tcpi_min_rtt": 10000, "tcpi_bytes_acked": 99}
    msg = _Msg({"INET_DIAG_INFO": info}, idiag_src=[0x0AC82401, 0, 0, 0], idiag_sport=40000,
               idiag_dst=[0x0AC82402, 0, 0, 0], idiag_dport=9000)  # fmt: skip
    s = socket_rtt(msg, socket.AF_INET)
    assert s is not None
    assert (s.src, s.dst, s.sport, s.dport) == ("10.200.36.1", "10.200.36.2", 40000, 9000)
    assert (s.rtt_ms, s.rttvar_ms, s.min_rtt_ms, s.bytes_acked) == (12.5, 3.0, 10.0, 99)
    assert socket_rtt(_Msg({"INET_DIAG_INFO": {"tcpi_rtt": 0}}), socket.AF_INET) is None


def test_udp_echo_and_tcp_connect_probes_on_loopback():
    with UdpEchoServer("127.0.0.1") as srv:
        rtt = UdpEchoProbe("127.0.0.1", srv.port, timeout_s=2.0).measure()
        assert rtt is not None and 0 < rtt < 1000
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        rtt = TcpConnectProbe("127.0.0.1", listener.getsockname()[1]).measure()
        assert rtt is not None and 0 < rtt < 1000
    finally:
        listener.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert TcpConnectProbe("127.0.0.1", port).measure() is not None  # the RST is a round trip
    assert UdpEchoProbe("127.0.0.1", port, timeout_s=0.05).measure() is None


def test_scheduler_keeps_recent_samples_per_class():
    t = {"now": 0.0}

    class P:
        def __init__(self, values):
            self.values = list(values)

        def measure(self):
            return self.values.pop(0)

    sched = ProbeScheduler({0: [P([5.0, None, 7.0])]}, clock=lambda: t["now"])
    for now in (1.0, 2.0, 3.0):
        t["now"] = now
        sched.run_once()
    assert sched.samples(since=0.0) == {0: [5.0, 7.0]}
    assert sched.samples(since=2.5) == {0: [7.0]}
    assert sched.failures == {0: 1}
    sched.start()
    sched.close()


@pytest.mark.parametrize("kind", ["htb", None])
def test_sum_classes_adds_the_same_id_over_interfaces(kind):
    from shaping.monitor import ClassCounters, sum_classes

    def msg(handle, b, d, kind_="htb"):
        class Stats2(dict):
            def get_attr(self, name):
                return {"TCA_STATS_BASIC": {"bytes": b, "packets": 1},
                        "TCA_STATS_QUEUE": {"drops": d, "backlog": 5, "qlen": 1, "overlimits": 2}}[name]  # fmt: skip

        return _Msg({"TCA_KIND": kind_, "TCA_STATS2": Stats2()}, handle=handle)

    out = sum_classes([msg(0x10010, 100, 1), msg(0x10010, 50, 2), msg(0x10011, 7, 0), msg(0x10012, 9, 9, "tbf")],
                      kind=kind)  # fmt: skip
    assert out[0x10010] == ClassCounters(150, 2, 3, 4, 10, 2)
    assert out[0x10011].bytes == 7
    assert (0x10012 in out) is (kind is None)
