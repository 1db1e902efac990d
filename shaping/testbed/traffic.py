"""Real traffic generators: gaming UDP at 60 Hz, request/response transactions, bulk TCP (cubic), UDP probes.

Every generator is bounded in packets and time and stops by itself. Timestamps are
CLOCK_MONOTONIC nanoseconds, which every network namespace of one host shares, so the sink's
receive time minus the sender's send time is the one-way delay.
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Gaming / probe packet header: player, sequence, send time (ns).
GAME_HDR = struct.Struct("!IIQ")
#: Echo trailer appended by the sink: its receive time (ns).
ECHO_TRAILER = struct.Struct("!Q")
#: Transaction request header: id, send time (ns), response size (bytes).
TXN_HDR = struct.Struct("!IQI")
#: Hard cap on any generator's run time, seconds.
MAX_DURATION_S = 120.0
#: Wait for late echoes and responses after the last send, seconds.
GRACE_S = 0.5


Clock = Callable[[], int]


def _bounded(duration_s: float) -> float:
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S}], got {duration_s}")
    return duration_s


def set_cubic(sock: socket.socket) -> None:
    """Use cubic on this socket: the host default may be bbr, which does not fill a deep buffer."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")


@dataclass
class EchoResult:
    """Per-packet outcome of a gaming or probe run: send times, RTTs and one-way delays of echoed packets."""

    sent: int
    received: int
    rtt_ms: list[float]
    owd_ms: list[float]
    send_t_s: list[float]
    """Send time (seconds since the run started) of each echoed packet, aligned with rtt_ms."""


def gaming_client(
    dst: str,
    port: int,
    *,
    players: int = 4,
    hz: float = 60.0,
    size: int = 120,
    duration_s: float = 10.0,
    src: str = "",
    clock: Clock = time.monotonic_ns,
) -> EchoResult:
    """Gaming-like UDP: each player sends a `size`-byte state update at `hz`; the sink echoes it back.

    Players are staggered over one period. Returns RTT and one-way delay of every echoed packet;
    a packet not echoed by GRACE_S after the last send counts as lost.
    """
    duration_s = _bounded(duration_s)
    if size < GAME_HDR.size or players < 1 or hz <= 0:
        raise ValueError("gaming_client needs size >= 16 bytes, players >= 1 and hz > 0")
    period_ns = int(1e9 / hz)
    n_per_player = int(duration_s * hz)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(players)]
    sel = selectors.DefaultSelector()
    pad = b"\0" * (size - GAME_HDR.size)
    t0 = clock()
    out = EchoResult(0, 0, [], [], [])
    try:
        for s in socks:
            s.bind((src, 0))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        schedule = sorted(
            (t0 + j * period_ns + p * period_ns // players, p, j) for p in range(players) for j in range(n_per_player)
        )
        end_ns = schedule[-1][0] + int(GRACE_S * 1e9) if schedule else t0
        i = 0
        while True:
            now = clock()
            while i < len(schedule) and schedule[i][0] <= now:
                _, p, j = schedule[i]
                try:
                    socks[p].sendto(GAME_HDR.pack(p, j, clock()) + pad, (dst, port))
                    out.sent += 1
                except (BlockingIOError, PermissionError):
                    # A full socket buffer drops the update, as a game would; an nftables drop rule
                    # on the output path refuses it with EPERM: a drop of the shaper.
                    out.sent += 1
                i += 1
            if now >= end_ns:
                break
            wait_ns = (schedule[i][0] if i < len(schedule) else end_ns) - now
            for key, _ in sel.select(timeout=max(wait_ns, 0) / 1e9):
                _drain_echoes(key.fileobj, clock, t0, out)  # type: ignore[arg-type]
    finally:
        sel.close()
        for s in socks:
            s.close()
    return out


def _drain_echoes(sock: socket.socket, clock: Clock, t0: int, out: EchoResult) -> None:
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return
        now = clock()
        if len(data) < GAME_HDR.size + ECHO_TRAILER.size:
            continue
        _, _, sent_ns = GAME_HDR.unpack_from(data)
        (sink_ns,) = ECHO_TRAILER.unpack_from(data, len(data) - ECHO_TRAILER.size)
        out.received += 1
        out.rtt_ms.append((now - sent_ns) / 1e6)
        out.owd_ms.append((sink_ns - sent_ns) / 1e6)
        out.send_t_s.append((sent_ns - t0) / 1e9)


def udp_blast(
    dst: str,
    port: int,
    *,
    pps: float = 1000.0,
    count: int = 2000,
    size: int = 200,
    duration_s: float = 10.0,
    src: str = "",
    clock: Clock = time.monotonic_ns,
) -> int:
    """Send `count` UDP packets at `pps` (the sink counts them); returns how many were sent."""
    duration_s = _bounded(duration_s)
    period = 1e9 / pps
    pad = b"\0" * max(0, size - GAME_HDR.size)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        t0 = clock()
        stop = t0 + int(duration_s * 1e9)
        while sent < count and clock() < stop:
            due = t0 + int(sent * period)
            delay = (due - clock()) / 1e9
            if delay > 0:
                time.sleep(delay)
            try:
                s.sendto(GAME_HDR.pack(0, sent, clock()) + pad, (dst, port))
            except PermissionError:
                pass  # an nftables drop rule on the output path refuses the datagram with EPERM: a drop
            sent += 1
    return sent


@dataclass
class TxnResult:
    """Outcome of a transactions run."""

    issued: int
    completed: int
    on_time: int
    latency_ms: list[float]

    @property
    def completion_rate(self) -> float:
        """Fraction of issued transactions completed within the deadline."""
        return self.on_time / self.issued if self.issued else 0.0


def transactions_client(
    dst: str,
    port: int,
    *,
    rate_hz: float = 100.0,
    connections: int = 4,
    request_bytes: int = 400,
    response_bytes: int = 400,
    deadline_ms: float = 100.0,
    duration_s: float = 10.0,
    src: str = "",
    seed: int = 0,
    clock: Clock = time.monotonic_ns,
) -> TxnResult:
    """Request/response over persistent TCP connections (cubic); Poisson arrivals at `rate_hz` in total.

    A transaction completes on time when its whole response arrives within `deadline_ms` of the request.
    """
    duration_s = _bounded(duration_s)
    if request_bytes < TXN_HDR.size:
        raise ValueError(f"request_bytes must be >= {TXN_HDR.size}")
    rng = random.Random(seed)
    out = TxnResult(0, 0, 0, [])
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    pending: dict[int, bytes] = {}
    t0 = clock()
    stop = t0 + int(duration_s * 1e9)
    try:
        for _ in range(connections):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            set_cubic(s)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((src, 0))
            s.settimeout(5.0)
            s.connect((dst, port))
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, data=len(socks) - 1)
            pending[len(socks) - 1] = b""
        next_ns = t0 + int(rng.expovariate(rate_hz) * 1e9)
        pad = b"\0" * (request_bytes - TXN_HDR.size)
        while True:
            now = clock()
            if now >= stop + int(GRACE_S * 1e9):
                break
            if now >= next_ns and now < stop:
                conn = socks[out.issued % connections]
                try:
                    conn.send(TXN_HDR.pack(out.issued, clock(), response_bytes) + pad)
                except BlockingIOError:
                    pass  # the connection's send buffer is full: the transaction is lost
                out.issued += 1
                next_ns += int(rng.expovariate(rate_hz) * 1e9)
                continue
            for key, _ in sel.select(timeout=max(min(next_ns, stop) - now, 1_000_000) / 1e9):
                idx = key.data
                pending[idx] = _read_responses(socks[idx], pending[idx], response_bytes, clock, deadline_ms, out)
    finally:
        sel.close()
        for s in socks:
            s.close()
    return out


def _read_responses(
    sock: socket.socket, buf: bytes, size: int, clock: Clock, deadline_ms: float, out: TxnResult
) -> bytes:
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return buf
    now = clock()
    buf += data
    while len(buf) >= size:
        _, sent_ns, _ = TXN_HDR.unpack_from(buf)
        buf = buf[size:]
        lat = (now - sent_ns) / 1e6
        out.completed += 1
        out.latency_ms.append(lat)
        out.on_time += lat <= deadline_ms
    return buf


def bulk_client(
    dst: str,
    port: int,
    *,
    flows: int = 2,
    duration_s: float = 10.0,
    chunk: int = 65536,
    src: str = "",
    congestion: bytes = b"cubic",
) -> int:
    """Bulk TCP: `flows` connections with `congestion` control send as fast as they can for duration_s.

    Returns the bytes handed to the sockets (the sink measures what arrived).
    """
    duration_s = _bounded(duration_s)
    total = [0] * flows
    payload = b"\xa5" * chunk
    stop = time.monotonic() + duration_s

    def run(i: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion)
            s.bind((src, 0))
            s.settimeout(5.0)
            s.connect((dst, port))
            s.settimeout(0.2)  # bounded blocking, so the loop sees its deadline
            while time.monotonic() < stop:
                try:
                    total[i] += s.send(payload)
                except TimeoutError:
                    continue

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 10.0)
    return sum(total)
