"""The sink's servers: UDP echo (gaming), UDP counters (probes), transaction responders, bulk receivers.

The sink records what arrived per port: packets and the DSCP of each (IP_RECVTOS on the UDP
sockets), and for bulk the received bytes in fixed time bins. It runs until stopped and at most
`max_s` seconds.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shaping.testbed.traffic import ECHO_TRAILER, GAME_HDR, TXN_HDR

#: Width of the bulk receivers' byte bins, seconds.
BIN_S = 0.1
#: Hard cap on the sink's run time, seconds.
SINK_MAX_S = 300.0


@dataclass
class SinkConfig:
    """Ports the sink serves."""

    addr: str
    echo_ports: list[int] = field(default_factory=list)
    count_ports: list[int] = field(default_factory=list)
    txn_ports: dict[int, int] = field(default_factory=dict)
    """Transaction port -> request size in bytes."""
    bulk_ports: list[int] = field(default_factory=list)
    max_s: float = 60.0


@dataclass
class PortStats:
    """What one port received."""

    packets: int = 0
    bytes: int = 0
    dscp: Counter[int] = field(default_factory=Counter)
    bins: dict[int, int] = field(default_factory=dict)
    """Bin index (BIN_S wide, from the sink's start) -> bytes received (bulk and UDP ports)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (keys become strings)."""
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "dscp": {str(k): v for k, v in sorted(self.dscp.items())},
            "bins": {str(k): v for k, v in sorted(self.bins.items())},
        }


class Sink:
    """The sink's servers, each on its own thread; `stop()` ends them."""

    def __init__(self, cfg: SinkConfig, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.cfg = cfg
        self.clock = clock
        self.t0 = clock()
        self.stats: dict[int, PortStats] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def start(self) -> None:
        """Bind every port and start serving."""
        udp = []
        for port in [*self.cfg.echo_ports, *self.cfg.count_ports]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((self.cfg.addr, port))
            s.setblocking(False)
            udp.append(s)
            self.stats[port] = PortStats()
        self._socks += udp
        self._spawn(self._serve_udp, udp)
        for port, req in self.cfg.txn_ports.items():
            self._spawn(self._listen, port, lambda c, p, r=req: self._serve_txn(c, p, r))
        for port in self.cfg.bulk_ports:
            self._spawn(self._listen, port, self._serve_bulk)

    def stop(self, timeout_s: float = 3.0) -> dict[str, Any]:
        """Stop every server and return the per-port statistics."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=timeout_s)
        for s in self._socks:
            s.close()
        with self._lock:
            ports = {str(p): st.as_dict() for p, st in self.stats.items()}
            return {"ports": ports, "bin_s": BIN_S, "t0_ns": self.t0}

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _serve_udp(self, socks: list[socket.socket]) -> None:
        if not socks:
            return
        echo = set(self.cfg.echo_ports)
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    self._drain_udp(key.fileobj, echo)  # type: ignore[arg-type]
        finally:
            sel.close()

    def _drain_udp(self, s: socket.socket, echo: set[int]) -> None:
        port = s.getsockname()[1]
        st = self.stats[port]
        while True:
            try:
                data, anc, _, peer = s.recvmsg(2048, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return
            now = self.clock()
            b = (now - self.t0) // int(BIN_S * 1e9)
            tos = next((d[0] for lvl, typ, d in anc if lvl == socket.IPPROTO_IP and typ == socket.IP_TOS), 0)
            with self._lock:
                st.packets += 1
                st.bytes += len(data)
                st.dscp[tos >> 2] += 1
                st.bins[b] = st.bins.get(b, 0) + len(data)
            if port in echo and len(data) >= GAME_HDR.size:
                try:
                    s.sendto(data[: GAME_HDR.size] + ECHO_TRAILER.pack(now), peer)
                except BlockingIOError:
                    pass

    def _listen(self, port: int, serve: Callable[[socket.socket, int], None]) -> None:
        with self._lock:
            self.stats[port] = PortStats()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((self.cfg.addr, port))
            ls.listen(64)
            ls.settimeout(0.1)
            while not self._stop.is_set():
                try:
                    conn, _ = ls.accept()
                except TimeoutError:
                    continue
                conn.settimeout(0.1)
                self._spawn(self._guard, conn, port, serve)

    def _guard(self, conn: socket.socket, port: int, serve: Callable[[socket.socket, int], None]) -> None:
        try:
            serve(conn, port)
        except OSError:
            pass  # the peer went away
        finally:
            conn.close()

    def _serve_txn(self, conn: socket.socket, port: int, request_bytes: int) -> None:
        st = self.stats[port]
        buf = b""
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buf += data
            while len(buf) >= request_bytes:
                ident, sent_ns, resp = TXN_HDR.unpack_from(buf)
                buf = buf[request_bytes:]
                with self._lock:
                    st.packets += 1
                    st.bytes += request_bytes
                conn.sendall(TXN_HDR.pack(ident, sent_ns, resp) + b"\0" * max(0, resp - TXN_HDR.size))

    def _serve_bulk(self, conn: socket.socket, port: int) -> None:
        st = self.stats[port]
        width = int(BIN_S * 1e9)
        while not self._stop.is_set():
            try:
                n = len(conn.recv(262144))
            except TimeoutError:
                continue
            if n == 0:
                return
            b = (self.clock() - self.t0) // width
            with self._lock:
                st.bytes += n
                st.bins[b] = st.bins.get(b, 0) + n
