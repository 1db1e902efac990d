"""Run a set of traffic flows through the testbed: the sink's servers, then each generator in the tenant namespace."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shaping.testbed.topology import Testbed, TestbedError, ns_argv

#: Generator kinds a Flow may name (roles of shaping.testbed.worker).
KINDS = ("gaming", "transactions", "bulk", "udp_blast")
#: Seconds a worker may take to start (import and bind) on a loaded host.
READY_S = 60.0
_REPO = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class Flow:
    """One traffic class's generator: its kind, destination port and generator arguments."""

    name: str
    kind: str
    port: int
    params: dict[str, Any] = field(default_factory=dict)
    request_bytes: int = 400
    """Transactions only: request size, which the sink needs to split the stream."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"flow {self.name!r}: unknown kind {self.kind!r}; known: {KINDS}")


@dataclass
class RunResult:
    """What one run produced: each generator's result, the sink's statistics, timing and counters."""

    flows: dict[str, dict[str, Any]]
    sink: dict[str, Any]
    start_ns: int
    duration_s: float
    counters_before: dict[str, dict[str, int]]
    counters_after: dict[str, dict[str, int]]

    def counter_delta(self, key: str, field_name: str = "tx_bytes") -> int:
        """Change of one link counter over the run (key is 'ns/ifname')."""
        return self.counters_after[key][field_name] - self.counters_before[key][field_name]


#: Starts shaping.testbed.worker without running shaping/__init__.py: the generators need the standard
#: library only, and the package's import of gymnasium took 2 s per worker on the loaded 2-core host.
#: Empty package modules whose __path__ names the source directories let the import system find the
#: worker, traffic and sink modules as usual.
_BOOT = """
import sys, types
for name, path in (("shaping", {root!r} + "/shaping"), ("shaping.testbed", {root!r} + "/shaping/testbed")):
    mod = types.ModuleType(name)
    mod.__path__ = [path]
    sys.modules[name] = mod
from shaping.testbed.worker import main
sys.exit(main(sys.argv[1:]))
"""


def _worker_argv(ns: str, role: str, args: dict[str, Any]) -> list[str]:
    boot = _BOOT.format(root=_REPO)
    return ns_argv(ns, [sys.executable, "-c", boot, role, json.dumps(args)])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, env.get("PYTHONPATH", "")) if p)
    return env


def _result(proc: subprocess.Popen[str], what: str, timeout_s: float, stdin: str | None = None) -> dict[str, Any]:
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise TestbedError(f"{what} did not finish within {timeout_s:.0f} s: {err.strip()[-500:]}") from None
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise TestbedError(f"{what} failed (exit {proc.returncode}): {err.strip()[-800:]}")


def _counters(tb: Testbed) -> dict[str, dict[str, int]]:
    nm = tb.names
    keys = [(nm.tenant_ns, x) for x in nm.tenant_links] + [(nm.router_ns, x) for x in nm.router_out]
    return {f"{ns}/{ifname}": tb.link_stats(ns, ifname) for ns, ifname in keys}


def _client_args(flow: Flow, dst: str, src: str, duration_s: float) -> dict[str, Any]:
    args: dict[str, Any] = {"duration_s": duration_s, "src": src, **flow.params}
    if flow.kind == "transactions":
        args["request_bytes"] = flow.request_bytes
    return {"dst": dst, "port": flow.port, **args}


def run_flows(
    tb: Testbed,
    flows: Sequence[Flow],
    duration_s: float,
    *,
    during: Callable[[float], None] | None = None,
    echo_ports: Sequence[int] = (),
) -> RunResult:
    """Run every flow for duration_s (each stops by itself) and collect their results.

    Args:
        tb: the testbed.
        flows: the generators, each in the tenant namespace towards the sink service.
        duration_s: how long each generator sends.
        during: called once with the run's elapsed seconds while the generators run and may
            change the shaping (a controller, a path change); it must return within duration_s.
        echo_ports: more UDP ports the sink echoes for the whole run (the path probes' reflector).
    """
    names = [f.name for f in flows]
    if len(set(names)) != len(names) or len({f.port for f in flows}) != len(flows):
        raise ValueError(f"flow names and ports must be unique: {names}")
    nm = tb.names
    sink_cfg = {
        "addr": nm.sink_service,
        "echo_ports": [f.port for f in flows if f.kind == "gaming"] + [int(p) for p in echo_ports],
        "count_ports": [f.port for f in flows if f.kind == "udp_blast"],
        "txn_ports": {str(f.port): f.request_bytes for f in flows if f.kind == "transactions"},
        "bulk_ports": [f.port for f in flows if f.kind == "bulk"],
        "max_s": duration_s + 30.0,
    }
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": _env(), "cwd": _REPO}
    sink = subprocess.Popen(_worker_argv(nm.sink_ns, "sink", sink_cfg), stdin=subprocess.PIPE, **popen)  # type: ignore[call-overload]
    clients: dict[str, subprocess.Popen[str]] = {}
    try:
        for f in flows:
            args = _client_args(f, nm.sink_service, nm.tenant_addr, duration_s)
            argv = _worker_argv(nm.tenant_ns, f.kind, args)
            clients[f.name] = subprocess.Popen(argv, stdin=subprocess.PIPE, **popen)  # type: ignore[call-overload]
        for name, p in [("sink", sink), *clients.items()]:
            _wait_ready(p, name)
        before = _counters(tb)
        start_ns = time.monotonic_ns()
        for p in clients.values():
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        if during is not None:
            during(time.monotonic_ns() / 1e9 - start_ns / 1e9)
        results = {name: _result(p, f"generator {name}", duration_s + 20.0) for name, p in clients.items()}
        after = _counters(tb)
        sink_stats = _result(sink, "sink", 10.0, stdin="stop\n")
    finally:
        for p in [sink, *clients.values()]:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5.0)
    return RunResult(results, sink_stats, start_ns, duration_s, before, after)


def _wait_ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_S)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "READY":
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise TestbedError(f"{what} did not start within {READY_S:.0f} s: {line.strip()} {err.strip()[-800:]}")
