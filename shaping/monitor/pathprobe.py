"""Per-path probes: small numbered UDP datagrams pinned to each provider path, echoed by a reflector.

The simulator reports, per path, the one-way delay and the loss a probe would see (shaping.sim's
``path_delay_ms`` and ``path_loss``); this module measures the same on a host. Each path gets one UDP
socket pinned to it: bound to the path's interface (SO_BINDTODEVICE, so the route lookup only takes
routes through that interface), optionally to the interface's source address and a firewall mark
(SO_MARK, for policy routing). Every ``period_s`` one probe leaves on every path: ``PROBE`` (path index,
sequence number, send time in ns). A reflector answers with the probe's header and its own receive time
(``STAMP``, ns of its CLOCK_MONOTONIC): ``PathReflector`` below, or the testbed sink's UDP echo, which
answers the same format.

Per path the prober keeps what was decided since the previous ``take``:

- an answered probe gives a round trip (receive - send on the prober's clock) and a one-way delay:
  half the round trip (``one_way="half_rtt"``, a symmetric path), or the reflector's receive time minus
  the send time (``"reflector_clock"``, valid only where both share CLOCK_MONOTONIC: one host, e.g.
  network namespaces);
- an unanswered probe is lost once a later probe of its path is answered (a path keeps the order of
  its packets), or once it waited ``timeout`` = clip(rtt_factor x the largest of the path's ``recent``
  round trips, min_timeout_s, max_timeout_s) (max_timeout_s before any answer), so a path whose queue
  grows is not declared lost, and a failed path with short round trips is declared lost within
  min_timeout_s; an answer after that counts as late, not as answered.

A window's loss is lost / (lost + answered); its delay is the mean one-way delay of its answers, or
the longest wait of a probe still unanswered if that is longer (a lower bound of its delay), or, when
nothing was answered, the longest wait of a probe lost or unanswered. A path that stops answering
shows its delay going up in the first window without answers, and its loss at 1 once its probes time
out (within min_timeout_s on a path with short round trips, rtt_factor x its round trip on a path
with a standing queue).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: A probe: path index, sequence number, send time (ns of the prober's clock).
PROBE = struct.Struct("!IIQ")
#: What the reflector appends to the probe's header: its receive time (ns of its CLOCK_MONOTONIC).
STAMP = struct.Struct("!Q")
#: Shortest time between two probes of one path (at most 200 probes per second and path).
MIN_PERIOD_S = 0.005
#: How one-way delays are derived (see the module docstring).
ONE_WAY_MODES = ("half_rtt", "reflector_clock")


@dataclass(frozen=True)
class PathProbeTarget:
    """Where one path's probes go and how they are pinned to the path."""

    host: str
    """Address of the reflector."""
    port: int
    """UDP port of the reflector."""
    interface: str | None = None
    """Interface the probes leave by (SO_BINDTODEVICE, needs CAP_NET_RAW); None: the routing decides."""
    src: str | None = None
    """Source address to bind (the path interface's own address keeps the answers on the path)."""
    mark: int | None = None
    """Firewall mark of the probes (SO_MARK, for fwmark policy routing); None: unmarked."""
    tos: int | None = None
    """IP TOS byte of the probes; None: 0."""


@dataclass(frozen=True)
class PathProbeConfig:
    """Rate, timeouts and one-way convention of the path probes."""

    period_s: float = 0.02
    """Time between two probes of a path (50 per second: 26 kbit/s of 66-byte frames per path)."""
    min_timeout_s: float = 0.05
    """Shortest wait before an unanswered probe is lost."""
    max_timeout_s: float = 1.0
    """Longest wait before an unanswered probe is lost (also the wait before any probe was answered)."""
    rtt_factor: float = 4.0
    """A probe is lost after this many times the largest recent round trip (clipped to the bounds above)."""
    recent: int = 16
    """Round trips of a path the timeout looks back on."""
    one_way: str = "half_rtt"
    """half_rtt: one-way = round trip / 2; reflector_clock: the reflector's receive time - the send time."""
    max_s: float | None = None
    """The probing thread stops by itself after this many seconds; None: when closed."""

    def __post_init__(self) -> None:
        if self.period_s < MIN_PERIOD_S:
            raise ValueError(f"period_s must be >= {MIN_PERIOD_S} (at most {1 / MIN_PERIOD_S:.0f} probes/s), "
                             f"got {self.period_s}")  # fmt: skip
        if not 0 < self.min_timeout_s <= self.max_timeout_s:
            raise ValueError(f"need 0 < min_timeout_s <= max_timeout_s, got {self.min_timeout_s}, {self.max_timeout_s}")
        if self.rtt_factor < 1 or self.recent < 1:
            raise ValueError(f"need rtt_factor >= 1 and recent >= 1, got {self.rtt_factor}, {self.recent}")
        if self.one_way not in ONE_WAY_MODES:
            raise ValueError(f"one_way must be one of {ONE_WAY_MODES}, got {self.one_way!r}")
        if self.max_s is not None and self.max_s <= 0:
            raise ValueError(f"max_s must be > 0 or None, got {self.max_s}")


@dataclass(frozen=True)
class PathWindow:
    """What one path's probes showed since the previous take."""

    sent: int
    answered: int
    lost: int
    late: int
    """Answers that came after their probe was declared lost (not counted as answered)."""
    delay_ms: float | None
    """Mean one-way delay of the answers (or the longest wait of an unanswered probe, if longer); without
    answers the longest wait of a lost or unanswered probe; None when nothing was sent or decided."""
    timeout_s: float
    """The path's timeout when the window was taken."""

    @property
    def decided(self) -> int:
        """Probes answered or lost in the window."""
        return self.answered + self.lost

    @property
    def loss(self) -> float | None:
        """lost / (lost + answered); None when no probe was decided."""
        return self.lost / self.decided if self.decided else None


def open_probe_socket(target: PathProbeTarget) -> socket.socket:
    """A non-blocking UDP socket pinned to the target's path (interface, source address, mark, TOS)."""
    family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if target.interface is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, target.interface.encode())
        if target.mark is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, target.mark)
        if target.tos is not None:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, target.tos)
        s.bind((target.src or "", 0))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


@dataclass
class _Path:
    """One path's probes in flight and what was decided since the previous take."""

    recent: deque[float]
    seq: int = 0
    pending: dict[int, float] = field(default_factory=dict)
    """Sequence number -> send time of the probes not answered yet."""
    lost_seqs: deque[int] = field(default_factory=lambda: deque(maxlen=1024))
    sent: int = 0
    delays: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    late: int = 0


class PathProber:
    """Probes every path in one daemon thread and reports each path's delay and loss per window.

    Args:
        targets: one target per path, in the spec's path order.
        config: rate, timeouts, one-way convention and lifetime.
        clock: monotonic clock in seconds (CLOCK_MONOTONIC for ``reflector_clock``); the monitor's own.
        sockets: makes a path's socket (``open_probe_socket``; tests hand in fakes).
        netns: namespace (name under /run/netns) the probing thread enters before opening its sockets;
            setns(2) moves only that thread.
        nice: niceness of the probing thread (applied as root only), so a loaded host does not delay the
            probes' sends and receives.
    """

    def __init__(
        self,
        targets: Sequence[PathProbeTarget],
        config: PathProbeConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sockets: Callable[[PathProbeTarget], socket.socket] = open_probe_socket,
        netns: str | None = None,
        nice: int | None = None,
    ) -> None:
        if not targets:
            raise ValueError("the prober needs at least one path")
        self.targets = tuple(targets)
        self.config = config or PathProbeConfig()
        self.clock, self.sockets, self.netns, self.nice = clock, sockets, netns, nice
        self.error = ""
        self._paths = [_Path(deque(maxlen=self.config.recent)) for _ in self.targets]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- the probes
    def open(self) -> None:
        """Open one socket per path (the thread does it in its namespace; tests call it directly)."""
        if not self._socks:
            self._socks = [self.sockets(t) for t in self.targets]

    def send_round(self) -> None:
        """Send one probe on every path; a send the kernel refuses leaves the probe to time out."""
        for i, (target, s) in enumerate(zip(self.targets, self._socks, strict=True)):
            with self._lock:
                p = self._paths[i]
                p.seq = (p.seq + 1) & 0xFFFFFFFF
                seq, now = p.seq, self.clock()
                p.pending[seq] = now
                p.sent += 1
            try:
                s.sendto(PROBE.pack(i, seq, int(now * 1e9)), (target.host, target.port))
            except OSError:
                pass  # no route or no buffer: lost like a dropped packet

    def drain(self, ready: Sequence[socket.socket] | None = None) -> None:
        """Read every answer waiting on the sockets (all of them, or those select() found ready)."""
        for i, s in enumerate(self._socks):
            if ready is not None and s not in ready:
                continue
            while True:
                try:
                    data = s.recv(256)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # e.g. an ICMP error queued on the socket: the probe will time out
                self._answer(i, data, self.clock())

    def _answer(self, i: int, data: bytes, now: float) -> None:
        if len(data) < PROBE.size:
            return
        path, seq, sent_ns = PROBE.unpack_from(data)
        if path != i:
            return
        with self._lock:
            p = self._paths[i]
            sent = p.pending.pop(seq, None)
            if sent is None:
                if seq in p.lost_seqs:
                    p.late += 1
                return
            rtt = now - sent
            p.recent.append(rtt)
            for older, t in list(p.pending.items()):  # overtaken: lost on a path that keeps order
                if t < sent:
                    del p.pending[older]
                    p.lost_seqs.append(older)
                    p.waits.append(now - t)
            if self.config.one_way == "reflector_clock" and len(data) >= PROBE.size + STAMP.size:
                (reflected_ns,) = STAMP.unpack_from(data, PROBE.size)
                p.delays.append(max(reflected_ns - sent_ns, 0) / 1e6)
            else:
                p.delays.append(rtt / 2 * 1e3)

    def timeout_s(self, i: int) -> float:
        """The current timeout of path i."""
        cfg = self.config
        recent = self._paths[i].recent
        if not recent:
            return cfg.max_timeout_s
        return min(max(cfg.rtt_factor * max(recent), cfg.min_timeout_s), cfg.max_timeout_s)

    def sweep(self) -> None:
        """Declare lost every probe that waited longer than its path's timeout."""
        now = self.clock()
        with self._lock:
            for i, p in enumerate(self._paths):
                timeout = self.timeout_s(i)
                for seq, sent in list(p.pending.items()):
                    if now - sent >= timeout:
                        del p.pending[seq]
                        p.lost_seqs.append(seq)
                        p.waits.append(now - sent)

    def take(self) -> list[PathWindow]:
        """Each path's window since the previous take (probes timed out by now included)."""
        self.sweep()
        now = self.clock()
        half = 0.5 if self.config.one_way == "half_rtt" else 1.0
        out = []
        with self._lock:
            for i, p in enumerate(self._paths):
                pending = max((now - t for t in p.pending.values()), default=0.0) * half * 1e3
                if p.delays:
                    delay: float | None = max(sum(p.delays) / len(p.delays), pending)
                else:
                    waits = p.waits + [now - t for t in p.pending.values()]
                    delay = max(waits) * half * 1e3 if waits else None
                out.append(PathWindow(p.sent, len(p.delays), len(p.waits), p.late, delay, self.timeout_s(i)))
                p.sent, p.late, p.delays, p.waits = 0, 0, [], []
        return out

    # ------------------------------------------------------------- the thread
    def _enter(self) -> bool:
        try:
            if self.netns is not None:
                from pyroute2.netns import setns

                setns(self.netns, flags=0)  # flags=0: never create it (pyroute2 defaults to O_CREAT)
            if self.nice is not None and os.geteuid() == 0:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            self.open()
        except OSError as err:
            self.error = f"path probes cannot start (netns {self.netns!r}): {err}"
            return False
        return True

    def _loop(self) -> None:
        if not self._enter():
            return
        period = self.config.period_s
        start = self.clock()
        end = None if self.config.max_s is None else start + self.config.max_s
        next_send = start
        while not self._stop.is_set():
            now = self.clock()
            if end is not None and now >= end:
                return
            if now >= next_send:
                self.send_round()
                next_send = next_send + period if next_send + period > now else now + period  # no catch-up bursts
            wait = min(max(next_send - self.clock(), 0.0), period)
            ready, _, _ = select.select(self._socks, [], [], wait)
            if ready:
                self.drain(ready)
            self.sweep()

    def start(self) -> PathProber:
        """Start the probing thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fedshape-path-probes", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for s in self._socks:
            s.close()
        self._socks = []


class PathReflector:
    """Answers path probes: the probe's header and the reflector's receive time, from a daemon thread.

    ``with PathReflector(host) as r``; tests and hosts without another reflector. ``sock`` is an
    unbound UDP socket made elsewhere, e.g. in another namespace (pyroute2.netns.create_socket).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = sock if sock is not None else socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.clock_ns = clock_ns
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fedshape-path-reflector", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(256)
            except TimeoutError:
                continue
            except OSError:
                return
            now = self.clock_ns()
            if len(data) >= PROBE.size:
                try:
                    self.sock.sendto(data[: PROBE.size] + STAMP.pack(now), peer)
                    self.answered += 1
                except OSError:
                    pass  # the answer is lost like a dropped packet

    def __enter__(self) -> PathReflector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.sock.close()
