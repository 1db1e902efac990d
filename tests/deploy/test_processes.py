"""experiments.processes: supervised children are stopped with every descendant, also those in new sessions."""

from __future__ import annotations

import os
import sys
import time

import pytest

from experiments.processes import ProcessGroup


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_stop_ends_processes_that_left_the_group(tmp_path):
    group = ProcessGroup(tmp_path)
    # The second sleep starts a session of its own, as Flower's SuperExec does, so killpg alone misses it.
    group.spawn("family", ["sh", "-c", "setsid sleep 60 & exec sleep 60"], os.environ)
    pid = group.pid("family")
    _wait_for(lambda: len(group.descendants(pid)) == 1)
    family = {pid: group.start_time(pid), **group.descendants(pid)}
    assert len(family) == 2 and None not in family.values()
    group.stop(grace=1.0)
    assert all(group.start_time(p) != start for p, start in family.items())


def test_last_stops_after_the_others_and_logs_are_kept(tmp_path):
    group = ProcessGroup(tmp_path)
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (print(NAME, time.time_ns(), flush=True), sys.exit(0))); print('up', flush=True); time.sleep(60)"  # noqa: E501
    for name in ("server", "node"):
        group.spawn(name, [sys.executable, "-c", code.replace("NAME", repr(name))], os.environ)
    _wait_for(lambda: all("up" in group.log(n) for n in ("server", "node")))
    group.stop(grace=5.0, last="server")
    stamps = {n: int((tmp_path / f"{n}.log").read_text().split()[-1]) for n in ("server", "node")}
    assert stamps["node"] < stamps["server"]


def test_names_are_unique_and_exit_status_is_reported(tmp_path):
    group = ProcessGroup(tmp_path)
    group.spawn("quick", ["sh", "-c", "echo hi; exit 3"], os.environ)
    assert group.wait("quick", 10) == 3
    assert group.log("quick") == "hi\n"
    with pytest.raises(ValueError, match="already started"):
        group.spawn("quick", ["true"], os.environ)
    group.stop()
