"""Benchmark isolation: one tenant opens many watch streams while other tenants and the provider make unary calls.

The service runs in its own process (`fedshape serve`, plaintext loopback, or mTLS with --tls); the
callers are grpc.aio tasks in this process, one channel each. The hostile tenant opens N watch streams in one burst
(WatchRules, WatchAgentStatus and WatchAppMetrics in turn) on one channel and holds those the service
accepts; the service's stream limits (shaping.service.limits) refuse the rest with RESOURCE_EXHAUSTED.
Meanwhile K other tenants (GetRules) and the provider (ListTenants) each make a fixed number of unary
calls, one after the other with a short pause; their latencies are compared with a baseline phase
without the hostile tenant. The hostile tenant runs in a child process of its own, so its client-side
work does not stall the callers' event loop; `client_loop_lag_max_ms` (the longest stall of that loop)
shows how much of a latency spike the measuring process caused itself. Prints one JSON object.

    python -m experiments.bench_hostile                       # 1,000 streams, 3 tenants + provider, 200 calls each
    python -m experiments.bench_hostile --quick               # 100 streams, 2 tenants, 20 calls each
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc

from experiments.bench_api import ROOT, Endpoint, Service, _setup
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import client_pb2_grpc
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import provider_pb2_grpc
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.config import ServiceConfig

TARGETS = {"others_p99_ms": 100.0}
HOSTILE = "hostile"


def _stats(lat: list[float]) -> dict[str, float | None]:
    lat = sorted(lat)
    if not lat:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": 1e3 * lat[len(lat) // 2], "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "max_ms": 1e3 * lat[-1]}


async def _caller(svc: Service, identity: str, calls: int, pause: float, lat: list[float],
                  errors: Counter[str]) -> None:
    """`calls` unary reads as `identity`: GetRules for a tenant, ListTenants for the provider."""
    md = svc.metadata(identity)
    async with svc.channel(identity) as ch:
        if identity.startswith("provider/"):
            pstub = provider_pb2_grpc.ProviderServiceStub(ch)

            async def call() -> Any:
                return await pstub.ListTenants(ppb.ListTenantsRequest(), metadata=md, timeout=10)
        else:
            cstub = client_pb2_grpc.ClientServiceStub(ch)

            async def call() -> Any:
                return await cstub.GetRules(pb.TenantRef(), metadata=md, timeout=10)

        for _ in range(calls):
            sent = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as err:
                errors[f"{err.code().name}: {err.details()}"] += 1
            lat.append(time.perf_counter() - sent)
            await asyncio.sleep(pause)


async def _first(call: Any) -> str:
    """How a stream started: `opened` (a message came) or its error code's name."""
    try:
        await call.read()
        return "opened"
    except grpc.aio.AioRpcError as err:
        return str(err.code().name)


async def _hostile(svc: Endpoint, streams: int, settle: float, stop: Awaitable[Any]) -> dict[str, Any]:
    """Open `streams` watches as the hostile tenant, hold the accepted ones until `stop` completes, cancel all."""
    identity = f"tenant/{HOSTILE}"
    md = svc.metadata(identity)
    async with svc.channel(identity) as ch:
        stub = client_pb2_grpc.ClientServiceStub(ch)
        calls: list[Any] = []
        started = time.perf_counter()
        for i in range(streams):
            kind = i % 3
            if kind == 0:
                calls.append(stub.WatchRules(cpb.WatchRulesRequest(), metadata=md, timeout=600))
            elif kind == 1:
                calls.append(stub.WatchAgentStatus(pb.TenantRef(), metadata=md, timeout=600))
            else:
                calls.append(stub.WatchAppMetrics(pb.TenantRef(), metadata=md, timeout=600))
        firsts = [asyncio.ensure_future(_first(c)) for c in calls]
        # A watch with nothing to send yet (WatchAppMetrics without pushed values) stays silent: still open
        # after `settle` seconds counts as opened.
        await asyncio.wait(firsts, timeout=settle)
        outcomes = Counter(f.result() if f.done() else "opened" for f in firsts)
        settled_s = time.perf_counter() - started
        await stop
        for c in calls:
            c.cancel()
        await asyncio.gather(*firsts, return_exceptions=True)
    opened = outcomes.pop("opened", 0)
    refused = outcomes.pop("RESOURCE_EXHAUSTED", 0)
    return {"attempted": streams, "opened": opened, "refused": refused, "other_errors": dict(outcomes),
            "settled_s": settled_s}


async def _hostile_child(target: str, tls_dir: str | None, streams: int, settle: float) -> None:
    """The hostile tenant as a child process: `ready` once connected, streams on `go`, its JSON on `stop`."""
    svc = Endpoint(target, Path(tls_dir) if tls_dir else None)
    async with svc.channel(f"tenant/{HOSTILE}") as ch:
        await ch.channel_ready()
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # go
    result = await _hostile(svc, streams, settle, loop.run_in_executor(None, sys.stdin.readline))
    print(json.dumps(result), flush=True)


async def _spawn_hostile(svc: Service, streams: int, settle: float) -> asyncio.subprocess.Process:
    """Start the hostile child and wait until it is connected (its start-up is not part of the phase)."""
    argv = [sys.executable, "-m", "experiments.bench_hostile", "--hostile-child", svc.target, "--streams",
            str(streams), "--settle", str(settle)]
    if svc.tls_dir is not None:
        argv += ["--pki", str(svc.tls_dir)]
    child = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 60)
    if line.strip() != b"ready":
        child.kill()
        await child.wait()
        raise RuntimeError(f"the hostile child did not start: {line!r}")
    return child


async def _reap(child: asyncio.subprocess.Process) -> None:
    """Close the child's stdin (it stops on end of input), wait for it; kill it if it lingers."""
    if child.stdin is not None:
        child.stdin.close()
    try:
        await asyncio.wait_for(child.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


async def _tell(child: asyncio.subprocess.Process, word: str) -> None:
    assert child.stdin is not None
    child.stdin.write(f"{word}\n".encode())
    await child.stdin.drain()


async def _loop_lag(done: asyncio.Event, lags: list[float]) -> None:
    """This process's event-loop lag (a 1 ms sleep's overshoot): the callers' latency this process caused itself."""
    while not done.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


async def _phase(svc: Service, tenants: list[str], calls: int, pause: float, streams: int,
                 settle: float) -> dict[str, Any]:
    """The other callers' unary calls, with the hostile tenant's streams (streams > 0) or without."""
    lat: list[float] = []
    errors: Counter[str] = Counter()
    done = asyncio.Event()
    child = await _spawn_hostile(svc, streams, settle) if streams else None
    try:
        lags: list[float] = []
        lag = asyncio.ensure_future(_loop_lag(done, lags))
        others = [f"tenant/{t}" for t in tenants] + ["provider/bench"]
        started = time.perf_counter()
        if child is not None:
            await _tell(child, "go")
        await asyncio.gather(*(_caller(svc, who, calls, pause, lat, errors) for who in others))
        out: dict[str, Any] = {"callers": len(others), "calls": len(lat), "errors": sum(errors.values()),
                               "error_codes": dict(errors), "seconds": time.perf_counter() - started,
                               **_stats(lat), "client_loop_lag_max_ms": 1e3 * max(lags, default=0.0)}
        done.set()
        await lag
        if child is not None:
            await _tell(child, "stop")
            assert child.stdout is not None
            out["hostile"] = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
    finally:
        if child is not None:
            await _reap(child)
    return out


def bench_hostile(streams: int, tenants: int, calls: int, pause: float, settle: float, tls: bool,
                  workers: int) -> dict[str, Any]:
    """A baseline phase without the hostile tenant, then the same calls while it opens its streams."""
    names = [f"other{i}" for i in range(tenants)]
    gc.freeze()  # as in bench_api: the client's own full collections would count as latency
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), tls, workers)
        try:
            asyncio.run(_setup(svc, [*names, HOSTILE]))
            baseline = asyncio.run(_phase(svc, names, calls, pause, 0, settle))
            hostile = asyncio.run(_phase(svc, names, calls, pause, streams, settle))
        finally:
            svc.stop()
    return {"baseline": baseline, "with_hostile": hostile,
            "meets_targets": {"others_p99_ms": hostile["p99_ms"] is not None
                              and hostile["p99_ms"] <= TARGETS["others_p99_ms"] and hostile["errors"] == 0}}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000, help="watch streams the hostile tenant opens")
    p.add_argument("--tenants", type=int, default=3, help="other tenants making unary calls (plus the provider)")
    p.add_argument("--calls", type=int, default=200, help="unary calls per other caller, per phase")
    p.add_argument("--pause", type=float, default=0.01, help="seconds between one caller's calls")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds a silent stream may take before it counts as opened")
    p.add_argument("--tls", action="store_true", help="mTLS instead of plaintext loopback")
    p.add_argument("--workers", type=int, default=ServiceConfig.active_calls, help="`fedshape serve --workers`")
    p.add_argument("--quick", action="store_true", help="100 streams, 2 tenants, 20 calls each, settle 0.5 s")
    p.add_argument("--hostile-child", help=argparse.SUPPRESS)  # internal: the hostile tenant's process, at TARGET
    p.add_argument("--pki", help=argparse.SUPPRESS)  # internal: the child's PKI directory under --tls
    args = p.parse_args(argv)
    if args.hostile_child:
        asyncio.run(_hostile_child(args.hostile_child, args.pki, args.streams, args.settle))
        return 0
    if args.quick:
        args.streams, args.tenants, args.calls, args.settle = 100, 2, 20, 0.5
    out: dict[str, Any] = {"streams": args.streams, "tenants": args.tenants, "calls": args.calls,
                           "pause_s": args.pause, "tls": args.tls, "workers": args.workers,
                           "max_watches": ServiceConfig.max_watches,
                           "max_watches_per_caller": ServiceConfig.max_watches_per_caller,
                           "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "targets": TARGETS}
    out.update(bench_hostile(args.streams, args.tenants, args.calls, args.pause, args.settle, args.tls,
                             args.workers))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
