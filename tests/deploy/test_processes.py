"""experiments.processes: supervised children are stopped with every descendant, also those in new sessions."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pathlib import Path

from experiments.processes import ProcessGroup, die_with_parent, start_time

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_child_and_what_it_started_die_with_its_parent(tmp_path):
    """A parent killed with SIGKILL (no cleanup runs): its child, which called die_with_parent, and the child's
    own child are gone within a second, as Ray's processes go with the federated run's simulation child."""
    import signal

    pids = tmp_path / "pids"
    child = (f"import os, subprocess, sys, time; sys.path.insert(0, {str(ROOT)!r}); "
             "from experiments.processes import die_with_parent; die_with_parent(int(sys.argv[1]), poll_s=0.05); "
             "g = subprocess.Popen(['sleep', '60']); "
             f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}'); time.sleep(60)")  # fmt: skip
    parent = ("import os, subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())]); time.sleep(60)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", parent, child])
    try:
        _wait_for(lambda: pids.is_file() and len(pids.read_text().split()) == 2)
        family = [int(p) for p in pids.read_text().split()]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        _wait_for(lambda: all(start_time(p) is None for p in family), timeout=3.0)
        assert all(start_time(p) is None for p in family)
    finally:
        proc.kill()


def test_die_with_parent_polls_the_parent_and_kills_its_group_once():
    calls: list[str] = []
    parents = iter([7, 7, 1])
    thread = die_with_parent(7, poll_s=0.0, getppid=lambda: next(parents), new_group=lambda: calls.append("group"),
                             kill_group=lambda: calls.append("kill"))  # fmt: skip
    thread.join(2.0)
    assert calls == ["group", "kill"] and not thread.is_alive()



def test_descendants_by_start_time_without_a_group():
    """The module's functions (what bench_orphans reads a killed run's tree with) see a grandchild until it is
    reaped."""
    from experiments.processes import descendants, start_time

    child = subprocess.Popen(["sh", "-c", "sleep 30 & exec sleep 30"])
    try:
        _wait_for(lambda: len(descendants(child.pid)) == 1)
        ((grandchild, started),) = descendants(child.pid).items()
        assert start_time(grandchild) == started and start_time(child.pid) is not None
    finally:
        child.kill()
        child.wait()
        os.kill(grandchild, 9)
    _wait_for(lambda: start_time(grandchild) is None)
    assert start_time(grandchild) is None