"""Supervisor: runs the agent as a child and puts the tenant's static rules back when it stops answering.

The agent's own watchdog (shaping.control.watchdog) covers a policy that fails; nothing inside the
agent's process can cover the process itself (stopped, deadlocked, stuck in a system call). The
supervisor, a separate process, listens for the agent's sd_notify heartbeats (``WATCHDOG=1``, one
per control step) and, when none came for ``deadline_s``:

1. applies the static rules itself, through the same enforcement code (shaping.enforce), after
   re-reading the kernel (the agent changed it since);
2. asks the agent (SIGUSR1) to re-read the kernel too: the signal waits while the agent is stopped,
   and when it answers again it takes over at its next step with a true picture of the kernel;
3. kills it (SIGKILL) when it stays silent for ``kill_after_s`` and starts a new one, with backoff.

Taking over again instead of restarting at once: a stall of a few intervals (a loaded host, a slow
netlink dump) costs those intervals of static rules, not a restart of several seconds. A child
that exits is restarted the same way, except after a clean exit (0) or a configuration error (2).
"""

from __future__ import annotations

import enum
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shaping.control.notify import Notification, SdNotifier

LOG = logging.getLogger("fedshape.supervise")
#: The agent's exit status for a configuration error (shaping.control.cli.main): restarting cannot help.
EXIT_CONFIG = 2


def exit_status(rc: int) -> int:
    """A child's Popen return code as a process exit status: 0 after SIGTERM (asked to stop), 128 + N for signal N."""
    if rc == -signal.SIGTERM:
        return 0
    return 128 - rc if rc < 0 else rc


class Child(Protocol):
    """What the supervisor needs of the agent's process (subprocess.Popen has it)."""

    pid: int

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        ...

    def send_signal(self, sig: int) -> None:
        """Send a signal."""
        ...

    def kill(self) -> None:
        """SIGKILL."""
        ...

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (subprocess.TimeoutExpired after ``timeout``)."""
        ...


class Inbox(Protocol):
    """Where notifications arrive (shaping.control.notify.NotifySocket)."""

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for a message."""
        ...

    def receive(self) -> list[Notification]:
        """The messages waiting now."""
        ...


class Phase(enum.Enum):
    """Where the supervised agent is."""

    STARTING = "starting"
    """Spawned; no heartbeat yet."""
    RUNNING = "running"
    """Heartbeats arrive within the deadline."""
    SILENT = "silent"
    """Missed the deadline: the static rules are in force until it answers or is killed."""
    WAITING = "waiting"
    """No agent process: the static rules are in force until the restart."""
    DONE = "done"


@dataclass(frozen=True)
class SuperviseConfig:
    """Deadlines of the supervisor."""

    interval_s: float
    """The agent's control interval (one heartbeat per interval)."""
    deadline_s: float | None = None
    """Silence after which the static rules are restored; None: one interval. The agent beats after each
    step and four times an interval while it waits, so its longest silence is one step's work; the rules
    are then in force within two intervals of a hang (the deadline, a poll, the restore)."""
    poll_s: float | None = None
    """How often the deadline is checked; None: a tenth of the interval."""
    start_timeout_s: float = 120.0
    """Time a new agent has to say READY (imports, checkpoint, reading the kernel)."""
    first_step_s: float = 2.0
    """Silence allowed after READY until the first step is done (it writes the whole plan, nft table included)."""
    kill_after_s: float = 5.0
    """Silence after which the agent is killed and restarted."""
    backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
    """Delays before restarts in a row (the last one repeats)."""
    healthy_s: float = 60.0
    """An agent that answered this long resets the backoff."""
    stop_timeout_s: float = 10.0
    """Time the agent has to exit after SIGTERM before SIGKILL."""

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or (self.deadline_s is not None and self.deadline_s <= 0):
            raise ValueError("interval_s and deadline_s must be > 0")
        if not self.backoff_s or min(self.backoff_s) < 0:
            raise ValueError("backoff_s needs at least one delay, none negative")

    @property
    def deadline(self) -> float:
        """The heartbeat deadline in seconds."""
        return self.deadline_s if self.deadline_s is not None else self.interval_s

    @property
    def poll(self) -> float:
        """The check period in seconds."""
        return self.poll_s if self.poll_s is not None else self.interval_s / 10


class Supervisor:
    """Keeps one agent process alive and the static rules in force whenever it does not answer.

    Args:
        spawn: starts a new agent process (with ``NOTIFY_SOCKET`` naming ``inbox``'s socket).
        inbox: the agent's notifications.
        restore: applies the static rules to the kernel (raises when the kernel refuses).
        config: deadlines.
        clock: monotonic clock, seconds.
        upstream: the supervisor's own manager (systemd's ``$NOTIFY_SOCKET``), told READY and pinged.
        upstream_every_s: ping period for ``upstream`` (half of systemd's ``WATCHDOG_USEC``).
        logger: where each event goes, one line each.
    """

    def __init__(
        self,
        spawn: Callable[[], Child],
        inbox: Inbox,
        restore: Callable[[], object],
        config: SuperviseConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        upstream: SdNotifier | None = None,
        upstream_every_s: float = 1.0,
        logger: logging.Logger = LOG,
    ) -> None:
        self.spawn, self.inbox, self.restore_fn, self.config = spawn, inbox, restore, config
        self.clock, self.upstream, self.upstream_every_s, self.log = clock, upstream, upstream_every_s, logger
        self.phase = Phase.WAITING
        self.child: Child | None = None
        self.exit_code: int | None = None
        self.restores = 0
        """Times the static rules were applied (the start included)."""
        self.restarts = 0
        self._spawned_at = self._last_beat = self._restart_at = self._last_up = self._grace_until = 0.0
        self._failures = 0
        self._restore_pending = False
        self._agent_stopping = False
        self._stop = False

    # -- events -------------------------------------------------------------------------------

    def start(self) -> None:
        """Apply the static rules (the floor while the agent starts), then start the agent.

        Raises:
            Exception: the kernel refused the static rules (a configuration error: nothing is started).
        """
        self.restore_fn()
        self.restores += 1
        self._start_agent(self.clock())
        if self.upstream is not None:
            self.upstream.ready()

    def stop(self) -> None:
        """Make the next ``poll`` stop the agent (SIGTERM) and finish; safe in a signal handler."""
        self._stop = True

    def poll(self) -> int | None:
        """One look at the agent: heartbeats, exit, deadlines. Returns the exit code once finished."""
        if self.phase is Phase.DONE:
            return self.exit_code
        now = self.clock()
        self._ping_upstream(now)
        if self._stop:
            return self._finish()
        self._read_inbox(now)
        rc = self.child.poll() if self.child is not None else None
        if rc is not None:
            return self._exited(rc, now)
        silence = now - self._last_beat
        c = self.config
        hung = silence > c.deadline and now > self._grace_until and not self._agent_stopping
        if self.phase is Phase.RUNNING and hung:
            self._silent(now, silence)
        elif self.phase is Phase.STARTING and now - self._spawned_at > c.start_timeout_s:
            self._kill(now, f"not ready {now - self._spawned_at:.1f} s after its start")
        elif self.phase is Phase.SILENT and silence > c.kill_after_s:
            self._kill(now, f"silent for {silence:.1f} s")
        elif self.phase is Phase.WAITING and now >= self._restart_at:
            self._start_agent(now)
        if self._restore_pending:
            self._restore(now)
        return None

    def run(self) -> int:
        """``start``, then ``supervise``."""
        self.start()
        return self.supervise()

    def supervise(self) -> int:
        """``poll`` until the agent is done (woken by each notification); returns the exit code for the process."""
        while (code := self.poll()) is None:
            self.inbox.wait(self.config.poll)
        return code

    # -- steps ----------------------------------------------------------------------------------

    def _start_agent(self, now: float) -> None:
        self.inbox.receive()  # late messages of a previous agent
        self.child = self.spawn()
        self.phase, self._spawned_at, self._agent_stopping = Phase.STARTING, now, False
        self.log.info("agent pid %d started", self.child.pid)

    def _read_inbox(self, now: float) -> None:
        child = self.child
        for msg in self.inbox.receive():
            if child is None or msg.pid not in (0, child.pid):
                continue  # a killed agent's last words, or another process
            if msg.fields.get("STOPPING") == "1":
                self._agent_stopping = True
            if msg.fields.get("WATCHDOG") != "1" and msg.fields.get("READY") != "1":
                continue
            if self.phase is Phase.SILENT:
                self.log.warning("agent pid %d answers again after %.3f s: it takes over from the static rules",
                                 child.pid, now - self._last_beat)  # fmt: skip
            elif self.phase is Phase.STARTING:
                self.log.info("agent pid %d is running (ready %.1f s after its start)", child.pid,
                              now - self._spawned_at)  # fmt: skip
            if msg.fields.get("WATCHDOG") == "1":
                self._grace_until = 0.0  # a step is done: the plain deadline from now on
            elif self.phase is Phase.STARTING:
                self._grace_until = now + self.config.first_step_s
            self._last_beat = now
            if self.phase in (Phase.STARTING, Phase.SILENT):
                self.phase = Phase.RUNNING
            if now - self._spawned_at >= self.config.healthy_s:
                self._failures = 0

    def _restore(self, now: float) -> bool:
        """Apply the static rules; on failure, retried at every poll."""
        t0 = self.clock()
        try:
            self.restore_fn()
        except Exception as err:  # the kernel refused: try again at the next poll, never give up
            self._restore_pending = True
            self.log.error("restoring the static rules failed (%s: %s); retrying", type(err).__name__, err)
            return False
        self._restore_pending = False
        self.restores += 1
        self.log.debug("static rules restored in %.1f ms", (self.clock() - t0) * 1e3)
        return True

    def _silent(self, now: float, silence: float) -> None:
        assert self.child is not None
        t0 = self.clock()
        ok = self._restore(now)
        took = (self.clock() - t0) * 1e3
        self.phase = Phase.SILENT
        # Its picture of the kernel is stale now: the signal waits for it if it is stopped.
        self._signal(signal.SIGUSR1)
        self.log.warning("agent pid %d silent for %.3f s (deadline %.3f s): %s; killed after %.1f s of silence",
                         self.child.pid, silence, self.config.deadline,
                         f"static rules restored in {took:.1f} ms" if ok else "restoring the static rules failed",
                         self.config.kill_after_s)  # fmt: skip

    def _kill(self, now: float, why: str) -> None:
        assert self.child is not None
        pid = self.child.pid
        self.child.kill()  # a stopped process dies too
        self._reap(1.0)
        self._restore(now)  # nothing else writes the tenant's shaping now
        delay = self._backoff(now)
        self.log.warning("agent pid %d killed (%s): static rules in force, restart in %.1f s", pid, why, delay)

    def _exited(self, rc: int, now: float) -> int | None:
        assert self.child is not None
        pid = self.child.pid
        if rc == 0:
            self.log.info("agent pid %d exited (0)", pid)
            return self._done(0)
        self._restore(now)
        if rc == EXIT_CONFIG:
            self.log.error("agent pid %d exited with a configuration error (%d): static rules in force, "
                           "not restarted", pid, rc)  # fmt: skip
            return self._done(rc)
        delay = self._backoff(now)
        self.log.warning("agent pid %d exited with status %d: static rules in force, restart in %.1f s",
                         pid, rc, delay)  # fmt: skip
        return None

    def _backoff(self, now: float) -> float:
        delays = self.config.backoff_s
        delay = delays[min(self._failures, len(delays) - 1)]
        self._failures += 1
        self.restarts += 1
        self.phase, self.child, self._restart_at = Phase.WAITING, None, now + delay
        return delay

    def _finish(self) -> int:
        """SIGTERM the agent and wait for it (SIGKILL and the static rules after ``stop_timeout_s``)."""
        if self.child is None:
            return self._done(0)
        rc = self.child.poll()
        if rc is None:
            self._signal(signal.SIGTERM)
            rc = self._reap(self.config.stop_timeout_s)
        if rc is None:
            self.log.error("agent pid %d did not stop within %.0f s: killed", self.child.pid,
                           self.config.stop_timeout_s)  # fmt: skip
            self.child.kill()
            self._reap(1.0)
            self._restore(self.clock())
            return self._done(1)
        # The agent leaves the kernel as it decided (its --teardown, or its last plan).
        return self._done(exit_status(rc))

    def _done(self, code: int) -> int:
        self.phase, self.exit_code = Phase.DONE, code
        return code

    def _signal(self, sig: int) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(sig)
            except ProcessLookupError:  # it exited in between: the next poll sees it
                pass

    def _reap(self, timeout_s: float) -> int | None:
        assert self.child is not None
        try:
            return self.child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def _ping_upstream(self, now: float) -> None:
        if self.upstream is not None and now - self._last_up >= self.upstream_every_s:
            self.upstream.heartbeat()
            self._last_up = now
