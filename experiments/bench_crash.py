"""Benchmark crash safety: SIGKILL the rules service mid-write, restart it, count lost acknowledged writes.

Each round starts `fedshape serve` (plaintext loopback) on the same SQLite file (or a fresh one with
--fresh-db), runs W writer threads, each a tenant of its own creating entities one after the other and
recording every write the service acknowledged, kills the service with SIGKILL after a random delay
(seeded), starts it again on the file and reads every tenant's rules back: an acknowledged entity that is
not there is a lost write. Prints one JSON object.

    python -m experiments.bench_crash                          # 10 rounds, 20 writers
    python -m experiments.bench_crash --quick                  # 2 rounds, 4 writers
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from experiments.bench_api import Service
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.channel import client_stub, connect, provider_stub

TARGETS = {"lost_acknowledged_writes": 0}
Acked = list[tuple[str, str, int]]


def write_entities(target: str, tenant: str, names: list[str], acked: Acked, stop: threading.Event,
                   failed: list[str] | None = None, subnet: int = 0, first: int = 0) -> None:
    """Create the entities `names` for `tenant` one by one; append (tenant, name, revision) per acknowledged write.

    Entity i gets the address 10.<subnet>.<j // 256>.<j % 256>/32 with j = first + i: writers with different
    `subnet`s, and a writer's successive calls with disjoint ranges, never claim the same address twice.
    Returns at the first failed call (the service died, and that write was not acknowledged), appending its
    status code's name to `failed`.
    """
    with connect(target, identity=f"tenant/{tenant}") as ch:
        stub = client_stub(ch)
        for i, name in enumerate(names):
            if stop.is_set():
                return
            j = first + i
            cidr = f"10.{subnet}.{j // 256}.{j % 256}/32"
            try:
                rules = stub.CreateEntity(cpb.EntityRequest(entity=pb.Entity(name=name, kind="subnet", cidrs=[cidr])),
                                          timeout=10)
            except grpc.RpcError as err:
                if failed is not None:
                    failed.append(err.code().name)
                return
            acked.append((tenant, name, rules.revision))


def _create_tenants(target: str, tenants: list[str]) -> None:
    with connect(target, identity="provider/bench") as ch:
        stub = provider_stub(ch)
        for t in tenants:
            try:
                stub.CreateTenant(ppb.CreateTenantRequest(name=t, cap_mbps=100.0), timeout=10)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise


def _missing(target: str, acked: Acked) -> list[tuple[str, str]]:
    """The acknowledged (tenant, entity) pairs the restarted service does not have."""
    by_tenant: dict[str, list[tuple[str, int]]] = {}
    for tenant, name, revision in acked:
        by_tenant.setdefault(tenant, []).append((name, revision))
    missing: list[tuple[str, str]] = []
    for tenant, writes in by_tenant.items():
        with connect(target, identity=f"tenant/{tenant}") as ch:
            rules = client_stub(ch).GetRules(pb.TenantRef(), timeout=10)
        names = {e.name for e in rules.entities}
        missing += [(tenant, name) for name, revision in writes if name not in names or revision > rules.revision]
    return missing


def crash_round(directory: Path, db: Path, r: int, writers: int, writes: int, kill_after: float,
                workers: int) -> dict[str, Any]:
    """One round: start, write, SIGKILL after `kill_after` s, restart, read back."""
    tenants = [f"w{k}" for k in range(writers)]
    acked: Acked = []
    failed: list[str] = []
    stop = threading.Event()
    svc = Service(directory, False, workers, db=db)
    try:
        _create_tenants(svc.target, tenants)
        threads = [threading.Thread(target=write_entities, daemon=True,
                                    args=(svc.target, t, [f"r{r}e{i}" for i in range(writes)], acked, stop,
                                          failed, k, r * writes))
                   for k, t in enumerate(tenants)]
        for th in threads:
            th.start()
        time.sleep(kill_after)
        svc.kill()
        stop.set()
        for th in threads:
            th.join(15)
    finally:
        svc.stop()
    restarted = time.perf_counter()
    svc = Service(directory, False, workers, db=db)
    try:
        restart_s = time.perf_counter() - restarted
        missing = _missing(svc.target, list(acked))
    finally:
        svc.stop()
    return {"round": r, "kill_after_s": round(kill_after, 3), "acknowledged": len(acked),
            "attempted_max": writers * writes, "mid_stream": 0 < len(acked) < writers * writes,
            "lost": len(missing), "lost_examples": missing[:5],
            "failed_writes": dict(Counter(failed)), "restart_s": round(restart_s, 3)}


def bench_crash(rounds: int, writers: int, writes: int, kill_min: float, kill_max: float, seed: int,
                fresh_db: bool, workers: int) -> dict[str, Any]:
    """R rounds of crash_round; per round and totals."""
    rng = random.Random(seed)
    per_round = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            db = Path(tmp) / (f"crash{r}.db" if fresh_db else "crash.db")
            per_round.append(crash_round(Path(tmp), db, r, writers, writes, rng.uniform(kill_min, kill_max), workers))
    lost = sum(x["lost"] for x in per_round)
    return {"rounds": per_round, "total_acknowledged": sum(x["acknowledged"] for x in per_round),
            "total_lost": lost, "rounds_mid_stream": sum(x["mid_stream"] for x in per_round),
            "meets_targets": {"lost_acknowledged_writes": lost <= TARGETS["lost_acknowledged_writes"]}}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--writers", type=int, default=20, help="writer threads, each its own tenant")
    p.add_argument("--writes", type=int, default=60, help="entities each writer creates per round at most")
    p.add_argument("--kill-min", type=float, default=0.2, help="earliest SIGKILL, seconds after the writers start")
    p.add_argument("--kill-max", type=float, default=1.5, help="latest SIGKILL")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--fresh-db", action="store_true", help="a new database file each round (default: the same)")
    p.add_argument("--workers", type=int, default=16, help="`fedshape serve --workers`")
    p.add_argument("--quick", action="store_true", help="2 rounds, 4 writers, 20 writes, kill within 0.1-0.4 s")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.writers, args.writes, args.kill_min, args.kill_max = 2, 4, 20, 0.1, 0.4
    if args.writers > 256 or args.rounds * args.writes > 65536:
        p.error("addresses run out: at most 256 writers and 65,536 writes per writer over all rounds")
    out: dict[str, Any] = {"writers": args.writers, "writes": args.writes, "seed": args.seed,
                           "fresh_db": args.fresh_db, "workers": args.workers, "cpus": os.cpu_count(),
                           "load_avg_1m": os.getloadavg()[0], "targets": TARGETS}
    out.update(bench_crash(args.rounds, args.writers, args.writes, args.kill_min, args.kill_max, args.seed,
                           args.fresh_db, args.workers))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
