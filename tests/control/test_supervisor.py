"""The supervisor's state machine with a fake clock, child and kernel; the sd_notify socket pair for real."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import pytest

from shaping.control.notify import Notification, NotifySocket, SdNotifier
from shaping.control.supervise import agent_environ, main
from shaping.control.supervisor import Phase, Supervisor, SuperviseConfig, exit_status

INTERVAL = 0.1
#: The agent beats after each step and four times an interval while it waits.
BEAT = INTERVAL / 4


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeChild:
    """A process that exits when killed, and on SIGTERM unless ``ignores_term``."""

    def __init__(self, pid: int, ignores_term: bool = False) -> None:
        self.pid, self.rc, self.signals, self.ignores_term = pid, None, [], ignores_term

    def poll(self):
        return self.rc

    def send_signal(self, sig):
        self.signals.append(sig)
        if sig == signal.SIGTERM and not self.ignores_term:
            self.rc = -signal.SIGTERM

    def kill(self):
        self.signals.append(signal.SIGKILL)
        self.rc = -signal.SIGKILL

    def wait(self, timeout=None):
        if self.rc is None:
            raise subprocess.TimeoutExpired("agent", timeout)
        return self.rc


class Inbox:
    def __init__(self) -> None:
        self.queue: list[Notification] = []

    def wait(self, timeout_s):
        return bool(self.queue)

    def receive(self):
        out, self.queue = self.queue, []
        return out


class Harness:
    """A supervisor over fakes; ``kernel`` lists what was applied, in order."""

    def __init__(self, fail_restores: int = 0, **config) -> None:
        self.clock, self.inbox, self.kernel, self.children = Clock(), Inbox(), [], []
        self.fail_restores = fail_restores
        self.ignores_term = False
        self.sup = Supervisor(self.spawn, self.inbox, self.restore, SuperviseConfig(INTERVAL, **config),
                              clock=self.clock)  # fmt: skip

    def spawn(self) -> FakeChild:
        self.children.append(FakeChild(1000 + len(self.children), self.ignores_term))
        self.kernel.append(f"agent {self.children[-1].pid} starts")
        return self.children[-1]

    def restore(self) -> None:
        if self.fail_restores:
            self.fail_restores -= 1
            raise OSError("netlink busy")
        self.kernel.append("static")

    def beat(self, pid: int | None = None, **fields: str) -> None:
        pid = self.children[-1].pid if pid is None else pid
        self.inbox.queue.append(Notification(pid, fields or {"WATCHDOG": "1"}))
        self.last_beat = self.clock.t

    def advance(self, seconds: float, beat_every: float | None = None) -> int | None:
        """Poll every 10 ms for ``seconds`` (with heartbeats every ``beat_every``); the first exit code."""
        next_beat = self.clock.t if beat_every else None
        for _ in range(round(seconds / 0.01)):
            self.clock.t += 0.01
            if next_beat is not None and self.clock.t >= next_beat - 1e-9:
                self.beat()
                next_beat += beat_every
            if (code := self.sup.poll()) is not None:
                return code
        return None


def test_static_rules_first_then_the_agent_and_no_restore_while_it_beats():
    h = Harness()
    h.sup.start()
    assert h.kernel == ["static", "agent 1000 starts"] and h.sup.phase is Phase.STARTING
    assert h.advance(3.0, beat_every=BEAT) is None
    assert h.sup.phase is Phase.RUNNING and h.kernel == ["static", "agent 1000 starts"]


def test_silence_restores_the_static_rules_within_two_intervals_and_the_agent_takes_over(caplog):
    h = Harness()
    h.sup.start()
    h.advance(1.0, beat_every=BEAT)
    with caplog.at_level(logging.WARNING, logger="fedshape.supervise"):
        while h.kernel[-1] != "static":
            h.advance(0.01)
        restored_after = h.clock.t - h.last_beat  # the deadline (one interval) and at most one poll
        assert INTERVAL < restored_after <= INTERVAL + SuperviseConfig(INTERVAL).poll + 1e-9
        assert h.sup.phase is Phase.SILENT and h.children[0].signals == [signal.SIGUSR1]
        h.advance(1.0)  # still silent, short of kill_after_s: nothing more happens
        h.beat()
        h.advance(0.01)
    assert h.sup.phase is Phase.RUNNING and h.kernel == ["static", "agent 1000 starts", "static"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "agent pid 1000 silent for" in lines[0] and "static rules restored in" in lines[0]
    assert "answers again" in lines[1]


def test_an_agent_silent_past_kill_after_is_killed_and_restarted_with_backoff():
    h = Harness(kill_after_s=2.0, backoff_s=(1.0, 3.0))
    h.sup.start()
    h.advance(0.5, beat_every=BEAT)
    h.advance(2.5)
    first = h.children[0]
    assert first.signals == [signal.SIGUSR1, signal.SIGKILL] and h.sup.phase is Phase.WAITING
    assert h.kernel[-2:] == ["static", "static"]  # at the deadline, and again once it is dead
    h.advance(1.0)
    assert len(h.children) == 2 and h.sup.phase is Phase.STARTING
    h.beat(pid=first.pid)  # a late message of the killed agent does not count
    h.advance(0.05)
    assert h.sup.phase is Phase.STARTING
    h.beat(READY="1")
    h.advance(0.01)
    assert h.sup.phase is Phase.RUNNING and h.sup.restarts == 1


def test_exits_crash_restart_with_growing_backoff_clean_and_config_exits_end():
    h = Harness(backoff_s=(1.0, 2.0))
    h.sup.start()
    h.children[0].rc = 1
    assert h.advance(0.01) is None and h.kernel[-1] == "static"
    h.advance(1.0)
    assert len(h.children) == 2
    h.children[1].rc = -signal.SIGSEGV
    h.advance(1.5)
    assert len(h.children) == 2  # the second delay is 2 s
    h.advance(0.6)
    assert len(h.children) == 3
    h.children[2].rc = 2
    assert h.advance(0.01) == 2 and h.kernel[-1] == "static" and h.sup.phase is Phase.DONE

    h = Harness()
    h.sup.start()
    h.children[0].rc = 0
    assert h.advance(0.01) == 0 and h.kernel == ["static", "agent 1000 starts"]


def test_the_first_step_after_ready_has_its_own_grace():
    h = Harness(first_step_s=1.0)
    h.sup.start()
    h.beat(READY="1")
    h.advance(0.9)  # the first step writes the whole plan: slower than an interval, not a hang
    assert h.sup.phase is Phase.RUNNING and h.kernel[-1] == "agent 1000 starts"
    h.advance(0.2)
    assert h.sup.phase is Phase.SILENT and h.kernel[-1] == "static"
    h.beat()
    h.advance(INTERVAL + 0.02)  # once a step is done, the plain deadline
    assert h.kernel[-2:] == ["static", "static"]


def test_no_first_heartbeat_within_the_start_timeout_is_a_kill():
    h = Harness(start_timeout_s=5.0)
    h.sup.start()
    h.advance(4.9)
    assert h.sup.phase is Phase.STARTING
    h.advance(0.2)
    assert h.children[0].signals == [signal.SIGKILL] and h.kernel[-1] == "static"


def test_a_stopping_agent_is_not_a_silent_one():
    h = Harness()
    h.sup.start()
    h.advance(0.3, beat_every=BEAT)
    h.beat(STOPPING="1")
    h.advance(1.0)
    assert h.sup.phase is Phase.RUNNING and h.kernel[-1] == "agent 1000 starts"


def test_a_failed_restore_is_retried_at_the_next_poll(caplog):
    h = Harness()
    h.sup.start()
    h.advance(0.3, beat_every=BEAT)
    h.fail_restores = 1
    with caplog.at_level(logging.ERROR, logger="fedshape.supervise"):
        h.advance(0.2)
    assert "restoring the static rules failed (OSError: netlink busy)" in caplog.text
    assert h.kernel[-1] == "static" and h.sup.phase is Phase.SILENT


def test_stop_forwards_sigterm_and_kills_an_agent_that_ignores_it():
    h = Harness()
    h.sup.start()
    h.sup.stop()
    assert h.advance(0.01) == 0 and h.children[0].signals == [signal.SIGTERM]

    h = Harness(stop_timeout_s=0.5)
    h.ignores_term = True
    h.sup.start()
    h.sup.stop()
    assert h.advance(0.01) == 1
    assert h.children[0].signals == [signal.SIGTERM, signal.SIGKILL] and h.kernel[-1] == "static"


def test_upstream_systemd_gets_ready_and_heartbeats(tmp_path):
    up = NotifySocket(str(tmp_path / "systemd"))
    try:
        h = Harness()
        h.sup.upstream, h.sup.upstream_every_s = SdNotifier(up.path), 0.5
        h.sup.start()
        h.advance(1.0, beat_every=BEAT)
        got = up.receive()
    finally:
        up.close()
    assert got[0].fields["READY"] == "1" and got[0].pid == os.getpid()
    assert sum(m.fields.get("WATCHDOG") == "1" for m in got) == 2


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_round_trip_with_the_senders_pid(tmp_path, abstract):
    path = f"@fedshape-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    inbox = NotifySocket(path)
    sender = SdNotifier.from_environ({"NOTIFY_SOCKET": path})
    try:
        assert sender.heartbeat() and sender.ready() and sender.stopping()
        assert inbox.wait(1.0)
        got = inbox.receive()
    finally:
        sender.close()
        inbox.close()
    assert [m.fields for m in got] == [{"WATCHDOG": "1"}, {"READY": "1", "MAINPID": str(os.getpid())},
                                       {"STOPPING": "1"}]  # fmt: skip
    assert {m.pid for m in got} == {os.getpid()}
    assert not SdNotifier.from_environ({}).heartbeat()  # no manager: nothing sent, nothing raised
    assert not SdNotifier(str(tmp_path / "gone")).heartbeat()  # a manager that went away: logged, not raised


def test_agent_environment_and_exit_status(tmp_path):
    env = agent_environ({"PATH": "/bin", "WATCHDOG_PID": "1", "WATCHDOG_USEC": "5000000"}, "/run/x", 0.15)
    assert env == {"PATH": "/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "150000"}
    assert [exit_status(rc) for rc in (0, 3, -signal.SIGTERM, -signal.SIGKILL)] == [0, 3, 0, 137]


def test_cli_configuration_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main([]) == 2
    assert "give the agent's arguments after --" in capsys.readouterr().err
    assert main(["--", "--tenant-config", str(tmp_path / "none.yaml"), "--iface", "x", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedshape-supervise: error:") and "\n" not in err
    assert main(["--", "--service", "127.0.0.1:1", "--tenant", "acme", "--iface", "x", "--dry-run"]) == 2
    assert "run it without fedshape-supervise" in capsys.readouterr().err


def test_the_agent_re_reads_the_kernel_before_its_next_apply_when_asked(spec):
    from shaping.baselines import static_priority_plan
    from shaping.control.kernel_backend import KernelBackend

    calls: list[str] = []

    class Enforcer:
        def apply(self, plan):
            calls.append("apply")

        def reconcile(self):
            calls.append("reconcile")

    class Monitor:
        def set_plan(self, plan):
            pass

    backend = KernelBackend(spec, Monitor(), Enforcer())
    plan = static_priority_plan(spec)
    backend.apply(plan)
    backend.request_resync()  # what the agent's SIGUSR1 handler does
    backend.apply(plan)
    backend.apply(plan)
    assert calls == ["apply", "reconcile", "apply", "apply"]
