"""Supervised child processes: one log file and one session each, and a stop() that leaves nothing behind; and a
child that takes its own descendants down with it when its parent dies (die_with_parent)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


def die_with_parent(
    parent: int,
    *,
    poll_s: float = 0.25,
    getppid: Callable[[], int] = os.getppid,
    new_group: Callable[[], None] = lambda: os.setpgid(0, 0),
    kill_group: Callable[[], None] = lambda: os.killpg(0, signal.SIGKILL),
) -> threading.Thread:
    """Call first in a child process: it leads a process group of its own, which what it starts joins (Ray's
    GCS, raylet and workers do), and a daemon thread kills that whole group once the parent is gone.

    A parent killed with SIGKILL runs no cleanup: without this its child, and everything the child started,
    would run on (Ray's processes for a minute or more, the simulation to its end). Polling the parent's pid
    costs nothing; the group is gone within poll_s of the parent's death.

    Args:
        parent: the parent's pid (os.getpid() in the parent, passed to the child: the child's own getppid()
            may already be another process's if the parent died before the child started).
        poll_s: how often the parent is looked for.
        getppid, new_group, kill_group: the OS surfaces, for tests.
    Returns:
        The watching thread (started).
    """
    new_group()

    def watch() -> None:
        while getppid() == parent:
            time.sleep(poll_s)
        kill_group()

    thread = threading.Thread(target=watch, name="die-with-parent", daemon=True)
    thread.start()
    return thread


def start_time(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The start time of a live process (field 22 of /proc/PID/stat: tells a reused pid apart), or None when
    it is gone or a zombie."""
    try:
        fields = (proc_root / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None  # dead, waiting for its (new) parent to reap it
    return fields[19]


def descendants(pid: int, proc_root: Path = Path("/proc")) -> dict[int, str]:
    """Children, grandchildren, ... of ``pid`` that are alive, with their start times."""
    children: dict[int, list[int]] = {}
    for entry in proc_root.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if (start := start_time(child, proc_root)) is not None:
            found[child] = start
            todo += children.get(child, [])
    return found


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: BinaryIO


class ProcessGroup:
    """Processes started by name, logging to LOG_DIR/NAME.log, stopped together (also their descendants).

    Flower's SuperLink and SuperNode start SuperExec processes in sessions of their own, which then start
    the ServerApp/ClientApp processes; signalling a process group misses them, so stop() also walks /proc.

    Args:
        log_dir: where the logs go.
        clock, sleep: the clock, for tests.
        proc_root: /proc, to find descendants and tell reused pids apart.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self.log_dir = log_dir
        self._clock, self._sleep, self._proc_root = clock, sleep, proc_root
        self._procs: dict[str, _Proc] = {}

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
        """Start ``argv`` as NAME in a new session, stdout and stderr to LOG_DIR/NAME.log."""
        if name in self._procs:
            raise ValueError(f"a process named {name!r} was already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            list(argv), stdout=log_file, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd or self.log_dir,
            start_new_session=True,
        )
        self._procs[name] = _Proc(popen, log_path, log_file)

    def pid(self, name: str) -> int:
        """The process id of NAME."""
        return self._procs[name].popen.pid

    def poll(self, name: str) -> int | None:
        """NAME's exit status, or None while it runs."""
        return self._procs[name].popen.poll()

    def log(self, name: str) -> str:
        """NAME's log so far."""
        return self._procs[name].log_path.read_text(errors="replace")

    def wait(self, name: str, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for NAME to exit; its exit status, or None if it still runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self._procs[name].popen.wait(timeout)
        return None

    def start_time(self, pid: int) -> str | None:
        """The start time of a live process (tells a reused pid apart), or None when it is gone or a zombie."""
        return start_time(pid, self._proc_root)

    def descendants(self, pid: int) -> dict[int, str]:
        """Children, grandchildren, ... of ``pid``, with their start times."""
        return descendants(pid, self._proc_root)

    def _wait_gone(self, family: Mapping[int, str], timeout: float) -> set[int]:
        deadline = self._clock() + timeout
        while (alive := {p for p, s in family.items() if self.start_time(p) == s}) and self._clock() < deadline:
            self._sleep(0.1)
        return alive

    def _stop_wave(self, wave: Sequence[_Proc], grace: float) -> None:
        family = {pid: start for proc in wave for pid, start in self.descendants(proc.popen.pid).items()}
        for proc in wave:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = self._clock() + grace
        for proc in wave:
            try:
                proc.popen.wait(max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(grace)
        # Flower's SuperExec and app processes watch their parent and leave by themselves; kill what stays.
        if alive := self._wait_gone(family, grace):
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._wait_gone(family, grace)
        for proc in wave:
            proc.log_file.close()

    def stop(self, grace: float = 10.0, last: str | None = None) -> None:
        """Stop everything: SIGTERM, SIGKILL after ``grace`` s; ``last`` (e.g. the server) only after the rest."""
        procs = self._procs
        first = [p for name, p in procs.items() if name != last]
        self._stop_wave(first, grace)
        if last in procs:
            self._stop_wave([procs[last]], grace)
        self._procs = {}
