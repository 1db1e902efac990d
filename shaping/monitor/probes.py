"""Active delay probes of a class's path: TCP connect time or UDP echo round trips, run in a background thread.

Probes measure what passive TCP_INFO cannot: classes without TCP (gaming over UDP) and paths with
no connection open. A probe should use the class's own ports/DSCP so it is classified into the
class's HTB queue and sees its queueing delay; ``ping`` is not needed (nor always present).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

SocketFactory = Callable[[int, int], socket.socket]


def _default_socket(family: int, kind: int) -> socket.socket:
    return socket.socket(family, kind)


class Probe(Protocol):
    """One round-trip measurement."""

    def measure(self) -> float | None:
        """Round-trip time in milliseconds, or None when it failed or timed out."""
        ...


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass
class _SocketProbe:
    """The target, timeout, marking, clock and socket factory of a probe, and the set-up of its socket."""

    host: str
    port: int
    timeout_s: float = 1.0
    tos: int | None = None
    """IP TOS byte (DSCP << 2) to set, so the probe shares the class's marking."""
    clock: Callable[[], float] = time.perf_counter
    sockets: SocketFactory = _default_socket

    def _socket(self, kind: int) -> socket.socket:
        return self.sockets(_family(self.host), kind)

    def _configure(self, s: socket.socket) -> None:
        s.settimeout(self.timeout_s)
        if self.tos is not None:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, self.tos)


@dataclass
class TcpConnectProbe(_SocketProbe):
    """Time of a TCP connect (SYN to SYN-ACK): one round trip, refused connections included (RST is an answer)."""

    def measure(self) -> float | None:
        """Connect and close; milliseconds or None on timeout/unreachable."""
        s = self._socket(socket.SOCK_STREAM)
        try:
            self._configure(s)
            t0 = self.clock()
            try:
                s.connect((self.host, self.port))
            except ConnectionRefusedError:
                pass  # the RST came back: a round trip all the same
            except OSError:
                return None
            return (self.clock() - t0) * 1e3
        finally:
            s.close()


@dataclass
class UdpEchoProbe(_SocketProbe):
    """Round trip of one datagram to a UDP echo responder (e.g. UdpEchoServer)."""

    _seq: int = field(default=0, init=False)

    def measure(self) -> float | None:
        """Send a numbered datagram and wait for the same bytes back; milliseconds or None."""
        s = self._socket(socket.SOCK_DGRAM)
        try:
            self._configure(s)
            self._seq += 1
            payload = f"fedshape-probe {self._seq}".encode()
            t0 = self.clock()
            s.sendto(payload, (self.host, self.port))
            deadline = t0 + self.timeout_s
            while True:
                s.settimeout(max(deadline - self.clock(), 1e-3))
                data = s.recv(2048)
                if data == payload:
                    return (self.clock() - t0) * 1e3
        except OSError:
            return None
        finally:
            s.close()


class UdpEchoServer:
    """A UDP echo responder in a daemon thread (tests and testbeds; ``with UdpEchoServer(host) as srv``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> None:
        # sock: an unbound UDP socket made elsewhere, e.g. in another namespace (pyroute2.netns.create_socket)
        self.sock = sock if sock is not None else socket.socket(_family(host), socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fedshape-udp-echo", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sock.sendto(data, peer)

    def __enter__(self) -> UdpEchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.sock.close()


class ProbeScheduler:
    """Runs each class's probes every ``period_s`` in one daemon thread and keeps recent samples.

    Args:
        probes: class index -> its probes.
        period_s: time between rounds.
        keep: samples kept per class (a sliding window).
        clock: monotonic clock of the sample timestamps.
        netns: namespace (name under /run/netns) the probing thread enters first, so every probe
            socket lives there; setns(2) moves only the calling thread, the agent stays where it is.
    """

    def __init__(
        self,
        probes: Mapping[int, list[Probe]],
        period_s: float = 0.05,
        keep: int = 400,
        clock: Callable[[], float] = time.monotonic,
        netns: str | None = None,
    ) -> None:
        self.netns = netns
        self.error = ""
        self.probes = {int(k): list(v) for k, v in probes.items()}
        self.period_s = period_s
        self.clock = clock
        self._samples: dict[int, deque[tuple[float, float]]] = {k: deque(maxlen=keep) for k in self.probes}
        self.failures: dict[int, int] = dict.fromkeys(self.probes, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        """One round of every probe (the thread's body; tests call it directly)."""
        for c, probes in self.probes.items():
            for p in probes:
                rtt = p.measure()
                with self._lock:
                    if rtt is None:
                        self.failures[c] += 1
                    else:
                        self._samples[c].append((self.clock(), rtt))

    def _loop(self) -> None:
        if self.netns is not None:
            from pyroute2.netns import setns

            try:
                setns(self.netns, flags=0)  # flags=0: never create it (pyroute2 defaults to O_CREAT)
            except OSError as err:
                self.error = f"cannot enter netns {self.netns!r}: {err}"
                return
        while not self._stop.wait(self.period_s):
            self.run_once()

    def start(self) -> ProbeScheduler:
        """Start the probing thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fedshape-probes", daemon=True)
            self._thread.start()
        return self

    def samples(self, since: float) -> dict[int, list[float]]:
        """RTT samples (ms) of each class taken at or after ``since`` (clock time)."""
        with self._lock:
            return {c: [r for t, r in d if t >= since] for c, d in self._samples.items()}

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
