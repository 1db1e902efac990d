"""The struct-decoded sock_diag reader: a hand-built message, and (root) agreement with pyroute2 on real sockets."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from shaping.monitor.fast_diag import (
    INET_DIAG_INFO,
    SOCK_DIAG_BY_FAMILY,
    TCPDIAG_GETSOCK,
    FastDiagRtt,
    decode_socket,
)


def _diag_msg(family: int, src: str, sport: int, dst: str, dport: int, info: bytes) -> bytes:
    width = 4 if family == socket.AF_INET else 16
    sockid = struct.pack("!HH", sport, dport)
    sockid += socket.inet_pton(family, src).ljust(16, b"\0") + socket.inet_pton(family, dst).ljust(16, b"\0")
    sockid += b"\0" * 12  # interface, cookie
    assert width in (4, 16)
    body = struct.pack("=BBBB", family, 1, 0, 0) + sockid + b"\0" * 20
    nla = struct.pack("=HH", 4 + len(info), INET_DIAG_INFO) + info
    return body + nla + b"\0" * (-len(nla) % 4)


def _tcp_info(rtt_us: int, rttvar_us: int, min_rtt_us: int, acked: int, size: int = 232) -> bytes:
    info = bytearray(size)
    struct.pack_into("=II", info, 68, rtt_us, rttvar_us)
    if size >= 128:
        struct.pack_into("=Q", info, 120, acked)
    if size >= 152:
        struct.pack_into("=I", info, 148, min_rtt_us)
    return bytes(info)


@pytest.mark.parametrize(
    ("family", "src", "dst"),
    [(socket.AF_INET, "10.200.100.1", "10.200.100.2"), (socket.AF_INET6, "fd00::1", "2001:db8::2")],
)
def test_decode_socket_reads_addresses_ports_and_tcp_info(family, src, dst):
    raw = _diag_msg(family, src, 40000, dst, 9000, _tcp_info(1500, 250, 1200, 123456))
    s = decode_socket(memoryview(raw), 0, len(raw))
    assert s is not None
    assert (s.src, s.sport, s.dst, s.dport) == (src, 40000, dst, 9000)
    assert (s.rtt_ms, s.rttvar_ms, s.min_rtt_ms, s.bytes_acked) == (1.5, 0.25, 1.2, 123456)


def test_decode_socket_skips_sockets_without_rtt_and_tolerates_short_tcp_info():
    raw = _diag_msg(socket.AF_INET, "10.200.100.1", 1, "10.200.100.2", 2, _tcp_info(0, 0, 0, 0))
    assert decode_socket(memoryview(raw), 0, len(raw)) is None
    no_info = _diag_msg(socket.AF_INET, "10.200.100.1", 1, "10.200.100.2", 2, b"")[:72]
    assert decode_socket(memoryview(no_info), 0, len(no_info)) is None
    old = _diag_msg(socket.AF_INET, "10.200.100.1", 1, "10.200.100.2", 2, _tcp_info(2000, 100, 0, 0, size=104))
    s = decode_socket(memoryview(old), 0, len(old))
    assert s is not None and s.rtt_ms == 2.0 and s.min_rtt_ms == 0.0 and s.bytes_acked == 0


def test_fast_diag_parses_a_multipart_dump_from_a_socket():
    """A fake netlink peer: two sockets, then NLMSG_DONE, split over two datagrams."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader = FastDiagRtt(families=(socket.AF_INET,), sock=a)
    try:
        seq = 1 << 24
        msgs = [
            _diag_msg(socket.AF_INET, "10.200.100.1", port, "10.200.100.2", 9000, _tcp_info(1000 * (i + 1), 1, 1, i))
            for i, port in enumerate((1000, 1001))
        ]
        frames = [struct.pack("=IHHII", 16 + len(m), SOCK_DIAG_BY_FAMILY, 2, seq, 0) + m for m in msgs]
        done = struct.pack("=IHHII", 20, 3, 2, seq, 0) + b"\0" * 4
        b.send(frames[0])
        b.send(frames[1] + done)
        got = reader.read()
        assert [(s.sport, s.rtt_ms) for s in got] == [(1000, 1.0), (1001, 2.0)]
        request = b.recv(4096)
        assert struct.unpack_from("=IHH", request)[1:] == (SOCK_DIAG_BY_FAMILY, 0x301)
    finally:
        reader.close()
        b.close()


def test_one_walk_falls_back_to_one_request_per_family():
    """A kernel that refuses the legacy dump (EINVAL) is asked per family, then never again the legacy way."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader = FastDiagRtt(sock=a)
    assert reader.one_walk
    try:
        seq = 1 << 24
        b.send(struct.pack("=IHHIIi", 20, 2, 0, seq, 0, -22))  # NLMSG_ERROR -EINVAL for the legacy request
        v4 = _diag_msg(socket.AF_INET, "10.200.100.1", 1000, "10.200.100.2", 9000, _tcp_info(1000, 1, 1, 0))
        v6 = _diag_msg(socket.AF_INET6, "fd00::1", 1001, "fd00::2", 9000, _tcp_info(2000, 1, 1, 0))
        for i, m in enumerate((v4, v6), start=1):
            done = struct.pack("=IHHII", 20, 3, 2, seq + i, 0) + b"\0" * 4
            b.send(struct.pack("=IHHII", 16 + len(m), SOCK_DIAG_BY_FAMILY, 2, seq + i, 0) + m + done)
        got = reader.read()
        assert [(s.src, s.rtt_ms) for s in got] == [("10.200.100.1", 1.0), ("fd00::1", 2.0)]
        assert not reader.one_walk
        kinds = [struct.unpack_from("=IH", b.recv(4096))[1] for _ in range(3)]
        assert kinds == [TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY, SOCK_DIAG_BY_FAMILY]
    finally:
        reader.close()
        b.close()


@pytest.mark.root
def test_fast_diag_agrees_with_pyroute2_on_a_real_connection():
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    from pyroute2.netns import create_socket

    from shaping.enforce.testing import netns_pair
    from shaping.monitor.rtt import SockDiagRtt

    with netns_pair("fsx-diag", subnets=(100,)) as pair:
        listener = create_socket(pair.b, socket.AF_INET, socket.SOCK_STREAM, flags=0)
        client = create_socket(pair.a, socket.AF_INET, socket.SOCK_STREAM, flags=0)
        client6 = create_socket(pair.a, socket.AF_INET6, socket.SOCK_STREAM, flags=0)
        listener6 = create_socket(pair.a, socket.AF_INET6, socket.SOCK_STREAM, flags=0)
        fast, slow = SockDiagRtt(netns=pair.a), SockDiagRtt(netns=pair.a, fast=False)
        conns = []
        try:
            listener.bind((pair.b_addrs[0], 9000))
            listener.listen()
            client.connect((pair.b_addrs[0], 9000))
            listener6.bind(("::1", 9001))
            listener6.listen()
            client6.connect(("::1", 9001))
            conns = [listener.accept()[0], listener6.accept()[0]]
            for _ in range(5):  # bounded: a few round trips so the kernel has RTT samples
                client.sendall(b"y" * 2000)
                conns[0].recv(65536)
                client6.sendall(b"z" * 2000)
                conns[1].recv(65536)
            time.sleep(0.1)
            # Idle sockets: every field is stable between the two reads, so they must agree exactly.
            a, b = fast.read(), slow.read()
            key = lambda s: (s.src, s.sport, s.dst, s.dport)  # noqa: E731
            assert sorted(a, key=key) == sorted(b, key=key)
            ports = {(s.sport, s.dport) for s in a}
            assert any(9000 in p for p in ports) and any(9001 in p for p in ports)
            assert all(s.rtt_ms > 0 and s.min_rtt_ms > 0 for s in a)
            assert isinstance(fast._fast, FastDiagRtt) and fast._fast.one_walk  # the kernel took the legacy dump
            assert slow._fast is None
            per_family = FastDiagRtt(pair.a, one_walk=False)
            try:
                assert sorted(per_family.read(), key=key) == sorted(a, key=key)
            finally:
                per_family.close()
        finally:
            for s in (listener, client, client6, listener6, *conns):
                s.close()
            fast.close()
            slow.close()
