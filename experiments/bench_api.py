"""Benchmark the rules service: sustained requests/s and latency with concurrent clients; agent reconcile time.

The service runs in its own process (`fedshape serve`, plaintext loopback, or mTLS with --tls); the
clients are grpc.aio tasks in this process, one channel each. Reads are GetRules, writes are
UpdateClass (a committed SQLite transaction each) spread over several tenants. Closed-loop phases
(`reads`, `writes`: each client sends its next request when the last is answered) give the sustained
throughput; open-loop phases (`*_at_target`: the clients together send the target rate) give the
latency at that rate. Each phase runs for a fixed time after a warm-up; numbers are medians over
repeats. The reconcile part measures the time from a write's acknowledgement to the tenant agent
applying the new plan (recording backend).
Prints one JSON object.

    python -m experiments.bench_api                          # 50 clients, 3 repeats of 5 s per phase
    python -m experiments.bench_api --clients 50 --seconds 10 --repeats 5 --tls
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from shaping.rules import ClassRule, EntityRule, Match, RuleSet, StaticAction
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import client_pb2_grpc
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import provider_pb2_grpc
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.auth import IDENTITY_HEADER
from shaping.service.config import ServiceConfig
from shaping.service.convert import class_to_pb, rules_to_pb

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"reads_per_s": 1000.0, "writes_per_s": 200.0, "p99_ms": 50.0}


def bench_rules(tenant: str, index: int = 0) -> RuleSet:
    """Two entities, four classes: a typical small tenant (addresses in 10.<index>.0.0/16: tenants may not share)."""
    ents = (EntityRule(name="vm", cidrs=(f"10.{index}.0.10/32",), mode="adaptive"),
            EntityRule(name="net", kind="subnet", cidrs=(f"10.{index}.1.0/24",)))
    classes = tuple(ClassRule(name=f"c{i}", entity=("vm", "net")[i % 2], match=Match(ports=(1000 + i,)),
                              action=StaticAction(rate_mbps=5, ceil_mbps=50, priority=i % 4, dscp=10 * i))
                    for i in range(4))
    return RuleSet(tenant=tenant, cap_mbps=100.0, entities=ents, classes=classes)


class Endpoint:
    """A running service's address, and its PKI directory under mTLS (None: plaintext loopback)."""

    def __init__(self, target: str, tls_dir: Path | None) -> None:
        self.target, self.tls_dir = target, tls_dir

    def channel(self, identity: str) -> grpc.aio.Channel:
        """An aio channel speaking as `identity` (role/name)."""
        if self.tls_dir is None:
            return grpc.aio.insecure_channel(self.target)
        from shaping import pki

        role, _, name = identity.partition("/")
        path = self.tls_dir / f"{role}-{name}.pem"
        if not path.exists():
            issuer = pki.read_credentials(self.tls_dir, "ca")
            creds = pki.issue_client(issuer, role, name)  # type: ignore[arg-type]  # role is tenant or provider
            pki.write_credentials(self.tls_dir, f"{role}-{name}", creds)
        creds = pki.read_credentials(self.tls_dir, f"{role}-{name}")
        ca = (self.tls_dir / "ca.pem").read_bytes()
        return grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(ca, creds.key_pem, creds.cert_pem))

    def metadata(self, identity: str) -> tuple[tuple[str, str], ...]:
        """Identity header for the plaintext loopback server (ignored under mTLS)."""
        return ((IDENTITY_HEADER, identity),) if self.tls_dir is None else ()


class Service(Endpoint):
    """`fedshape serve` in a subprocess on an ephemeral loopback port."""

    def __init__(self, directory: Path, tls: bool, workers: int, db: Path | None = None) -> None:
        self.tls_dir = directory / "pki" if tls else None
        argv = [sys.executable, "-m", "shaping.cli", "serve", "--db", str(db or directory / "bench.db"), "--listen",
                "127.0.0.1:0", "--workers", str(workers)]
        if self.tls_dir is not None:
            from shaping import pki

            ca = pki.new_ca()
            pki.write_credentials(self.tls_dir, "ca", ca)
            pki.write_credentials(self.tls_dir, "server", pki.issue_server(ca, ["127.0.0.1"]))
            argv += ["--pki", str(self.tls_dir)]
        else:
            argv += ["--insecure-loopback"]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving on" not in line:
            raise RuntimeError(f"service did not start: {line!r}")
        super().__init__(line.split("serving on ")[1].split()[0], self.tls_dir)

    def kill(self) -> None:
        """SIGKILL and wait: the process gets no chance to flush or close anything."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def _client(svc: Service, tenant: str, write: bool, window: tuple[float, float, float], period: float,
                  lat: list[float], errors: list[str], k: int) -> int:
    """One client: back to back (period 0) or one request every `period` seconds (open loop).

    Open-loop latencies are measured from the scheduled send time, so a stalled server is charged for
    the requests it delayed (no coordinated omission).
    """
    start, warm_until, stop_at = window
    identity = f"tenant/{tenant}"
    md = svc.metadata(identity)
    done = 0
    async with svc.channel(identity) as ch:
        stub = client_pb2_grpc.ClientServiceStub(ch)
        klass = class_to_pb(bench_rules(tenant).classes[k % 4])
        i = 0
        due = start + (k * period / 50 if period else 0.0)  # spread the clients over one period
        while True:
            now = time.perf_counter()
            if period:
                if due > now:
                    await asyncio.sleep(due - now)
                sent, due = due, due + period
            else:
                sent = now
            if sent >= stop_at:
                return done
            try:
                if write:
                    klass.action.rate_mbps = 5.0 + (i % 10) * 0.5
                    await stub.UpdateClass(cpb.ClassRequest(**{"class": klass}), metadata=md, timeout=10)
                else:
                    await stub.GetRules(pb.TenantRef(), metadata=md, timeout=10)
            except grpc.aio.AioRpcError as err:
                errors.append(err.code().name)
            if sent >= warm_until:
                lat.append(time.perf_counter() - sent)
                done += 1
            i += 1


async def _phase(svc: Service, tenants: list[str], clients: int, write: bool, seconds: float,
                 warmup: float, rate: float = 0.0) -> dict[str, Any]:
    """Closed loop (rate 0: as fast as the service answers) or open loop at `rate` requests/s in total."""
    lat: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    window = (start, start + warmup, start + warmup + seconds)
    period = clients / rate if rate else 0.0
    counts = await asyncio.gather(*(_client(svc, tenants[k % len(tenants)], write, window, period, lat, errors, k)
                                    for k in range(clients)))
    lat.sort()
    n = sum(counts)
    return {"requests_per_s": n / seconds, "p50_ms": 1e3 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None, "requests": n,
            "errors": len(errors)}


async def _setup(svc: Service, tenants: list[str]) -> None:
    async with svc.channel("provider/bench") as ch:
        stub = provider_pb2_grpc.ProviderServiceStub(ch)
        for t in tenants:
            await stub.CreateTenant(ppb.CreateTenantRequest(name=t, cap_mbps=100.0),
                                    metadata=svc.metadata("provider/bench"), timeout=10)
    for i, t in enumerate(tenants):
        async with svc.channel(f"tenant/{t}") as ch:
            await client_pb2_grpc.ClientServiceStub(ch).PutRules(
                cpb.PutRulesRequest(rules=rules_to_pb(bench_rules(t, i))), metadata=svc.metadata(f"tenant/{t}"),
                timeout=10)


def bench_service(clients: int, seconds: float, warmup: float, repeats: int, tenants: int,
                  tls: bool, workers: int = ServiceConfig.active_calls) -> dict[str, Any]:
    """Medians over repeats: closed-loop throughput, and latency at the target rates (open loop)."""
    names = [f"bench{i}" for i in range(tenants)]
    phases = {"reads": (False, 0.0), "writes": (True, 0.0),
              "reads_at_target": (False, TARGETS["reads_per_s"]), "writes_at_target": (True, TARGETS["writes_per_s"])}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in phases}
    gc.freeze()  # the clients' own full collections (110 ms over the imports' objects) would count as latency
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), tls, workers)
        try:
            asyncio.run(_setup(svc, names))
            for _ in range(repeats):
                for name, (write, rate) in phases.items():
                    runs[name].append(asyncio.run(_phase(svc, names, clients, write, seconds, warmup, rate)))
        finally:
            svc.stop()
    out: dict[str, Any] = {}
    for phase, rs in runs.items():
        out[phase] = {k: statistics.median(r[k] for r in rs) for k in ("requests_per_s", "p50_ms", "p99_ms")}
        out[phase]["errors"] = sum(r["errors"] for r in rs)
        out[phase]["runs"] = rs
    return out


def _has_rate(plan: Any, rate: float) -> bool:
    return abs(plan.classes[1].rate_mbps - rate) < 1e-9


def _kernel_factory(netns: str | None, link: str, backends: list[Any]) -> Any:
    """Loops on the kernel: H2's KernelBackend (Monitor + KernelEnforcer) in `netns`, apply times logged."""
    from shaping.control import KernelBackend, KernelSetup, make_enforcer
    from shaping.monitor.monitor import Monitor, MonitorConfig
    from shaping.monitor.tcstats import NetlinkClassStats
    from shaping.service.agent import build_loop
    from shaping.service.recording import TimedBackend

    def factory(compiled: Any) -> Any:
        enforcer, classids = make_enforcer(compiled.spec, KernelSetup(interfaces=(link,), netns=netns))
        monitor = Monitor(compiled.spec, NetlinkClassStats((link,), netns=netns), classids,
                          config=MonitorConfig(base_delay_ms=(0.1,)))
        backends.append(TimedBackend(KernelBackend(compiled.spec, monitor, enforcer, teardown_on_close=True)))
        return build_loop(compiled, backends[-1], None)

    return factory


def _recording_factory(backends: list[Any]) -> Any:
    from shaping.service.agent import build_loop
    from shaping.service.recording import RecordingBackend

    def factory(compiled: Any) -> Any:
        backends.append(RecordingBackend(compiled.spec))
        return build_loop(compiled, backends[-1], None)

    return factory


def bench_reconcile(changes: int, kernel: bool = False, subnet: int = 80) -> dict[str, Any]:
    """Write-ack to applied-plan latency of a TenantAgent, on a recording backend or the kernel.

    With `kernel` (root), a veth pair in namespaces fsr-a/fsr-b (10.200.<subnet>.0/24, removed afterwards)
    is made here and the service, the agent and its KernelBackend run in a child process inside fsr-a
    (`ip netns exec`): pyroute2 0.9.7 opens sockets in another namespace by forking, which crashes a
    process that already runs gRPC threads. A plan counts as applied when the enforcer's netlink calls
    returned; the HTB rates read back from the kernel at the end must be the last rules'.
    """
    if not kernel:
        return _reconcile_run(changes, None, subnet)
    from shaping.enforce.testing import netns_pair

    with netns_pair("fsr", subnets=(subnet,)) as pair:
        argv = ["ip", "netns", "exec", pair.a, sys.executable, "-m", "experiments.bench_api", "--no-service",
                "--reconcile", str(changes), "--in-netns-link", pair.a_links[0], "--subnet", str(subnet)]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kernel reconcile run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)["reconcile"]
    return result


def _reconcile_run(changes: int, link: str | None, subnet: int) -> dict[str, Any]:
    """The agent against a service on loopback; `link`: shape that interface of this namespace (the kernel)."""
    from shaping.config import PathConfig, ScenarioConfig
    from shaping.service import RulesServer, ServiceConfig
    from shaping.service.agent import TenantAgent
    from shaping.service.channel import client_stub, connect
    from shaping.store import RulesStore

    scenario = ScenarioConfig(name="bench", paths=[PathConfig(name="eth0", capacity_mbps=1000.0)])
    rules = bench_rules("acme")
    rules = replace(rules, entities=(replace(rules.entities[0], cidrs=(f"10.200.{subnet}.1/32",)),
                                     replace(rules.entities[1], cidrs=(f"10.200.{subnet}.128/25",))))
    backends: list[Any] = []
    lat: list[float] = []
    out: dict[str, Any] = {}
    factory = _kernel_factory(None, link, backends) if link else _recording_factory(backends)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        store = RulesStore(Path(tmp) / "r.db")
        stack.callback(store.close)
        store.create_tenant("acme", 100.0)
        store.update("acme", lambda r: replace(r, entities=rules.entities, classes=rules.classes), actor="b", what="b")
        server = RulesServer(store, ServiceConfig(scenario=scenario), insecure_loopback=True).start()
        stack.callback(server.stop, 0)
        ch = connect(f"127.0.0.1:{server.port}", identity="tenant/acme")
        stack.callback(ch.close)
        stub = client_stub(ch)
        agent = TenantAgent(stub, "acme", scenario, factory).start()
        stack.callback(agent.stop)
        deadline = time.monotonic() + 30
        while not (backends and backends[0].applied) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not backends:
            raise RuntimeError("the agent built no loop within 30 s (see its log)")
        klass = class_to_pb(rules.classes[1])  # on the static entity
        rate = klass.action.rate_mbps
        for i in range(changes):
            rate = 1.0 + (i % 40) * 0.1
            klass.action.rate_mbps = rate
            n = len(backends[-1].applied)
            stub.UpdateClass(cpb.ClassRequest(**{"class": klass}), timeout=10)
            acked = time.monotonic()
            got = backends[-1].wait_for(functools.partial(_has_rate, rate=rate), n, 5.0)
            lat.append(float("inf") if got is None else got - acked)
            time.sleep(0.03)  # let the loop fall back into its interval rhythm
        if link:
            enforcer = backends[-1].inner.enforcer
            state = enforcer.reconcile()
            classid = enforcer.target.classid(1)
            got_rates = [c.rate * 8 / 1e6 for (_, cid), c in state.classes.items() if cid == classid]
            out["kernel_rate_mbps"] = got_rates
            out["kernel_matches_rules"] = bool(got_rates) and all(abs(r - rate) < 0.05 * rate for r in got_rates)
    lat.sort()
    out.update({"backend": f"kernel (HTB on {link} in netns fsr-a via KernelEnforcer)" if link else
                "recording (KernelEnforcer dry run)", "changes": changes,
                "p50_ms": 1e3 * lat[len(lat) // 2], "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "max_ms": 1e3 * lat[-1], "within_100ms": sum(x <= 0.1 for x in lat) / len(lat)})
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tenants", type=int, default=10, help="tenants the clients spread over")
    p.add_argument("--tls", action="store_true", help="mTLS instead of plaintext loopback")
    p.add_argument("--workers", type=int, default=ServiceConfig.active_calls,
                   help="threads running calls in the server (`fedshape serve --workers`)")
    p.add_argument("--reconcile", type=int, default=50, help="rule changes timed through the agent (0: skip)")
    p.add_argument("--kernel", action="store_true", help="also time them on the kernel in a netns (root)")
    p.add_argument("--no-service", action="store_true", help="skip the request/latency phases")
    p.add_argument("--subnet", type=int, default=80, help="third octet of the testbed's 10.200.X.0/24")
    p.add_argument("--in-netns-link", help=argparse.SUPPRESS)  # internal: the kernel run inside the namespace
    args = p.parse_args(argv)
    out: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "repeats": args.repeats,
                           "tls": args.tls, "workers": args.workers, "cpus": os.cpu_count(),
                           "load_avg_1m": os.getloadavg()[0], "targets": TARGETS}
    if not args.no_service:
        out.update(bench_service(args.clients, args.seconds, args.warmup, args.repeats, args.tenants, args.tls,
                                 args.workers))
        # Throughput from the closed-loop phases; p99 at the target rates (open loop, the clients share the rate).
        out["meets_targets"] = {
            "reads_per_s": out["reads"]["requests_per_s"] >= TARGETS["reads_per_s"],
            "writes_per_s": out["writes"]["requests_per_s"] >= TARGETS["writes_per_s"],
            "p99_ms_at_target_rates": max(out["reads_at_target"]["p99_ms"], out["writes_at_target"]["p99_ms"])
            <= TARGETS["p99_ms"],
        }
    if args.in_netns_link:
        out["reconcile"] = _reconcile_run(args.reconcile, args.in_netns_link, args.subnet)
    elif args.reconcile > 0:
        out["reconcile"] = bench_reconcile(args.reconcile, subnet=args.subnet)
        if args.kernel:
            out["reconcile_kernel"] = bench_reconcile(args.reconcile, kernel=True, subnet=args.subnet)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
