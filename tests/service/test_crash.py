"""Kill the service with SIGKILL in the middle of a stream of writes: every acknowledged write survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.channel import client_stub, connect, provider_stub
from shaping.store import RulesStore

ROOT = Path(__file__).resolve().parents[2]


def start(db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shaping.cli", "serve", "--db", str(db), "--listen", "127.0.0.1:0",
         "--insecure-loopback", "--workers", "16"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving on" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split("serving on ")[1].split()[0]


def writer(target: str, tenant: str, acked: list[tuple[str, str, int]], stop: threading.Event) -> None:
    with connect(target, identity=f"tenant/{tenant}") as ch:
        stub = client_stub(ch)
        for i in range(60):
            if stop.is_set():
                return
            name = f"e{i}"
            try:
                rules = stub.CreateEntity(cpb.EntityRequest(
                    entity=pb.Entity(name=name, kind="subnet", cidrs=[f"10.{i}.0.0/16"])), timeout=10)
            except grpc.RpcError:
                return  # the server died: this write was not acknowledged
            acked.append((tenant, name, rules.revision))


def test_sigkill_mid_write_loses_no_acknowledged_write(tmp_path):
    db = tmp_path / "crash.db"
    proc, target = start(db)
    tenants = [f"t{i}" for i in range(6)]
    acked: list[tuple[str, str, int]] = []
    stop = threading.Event()
    try:
        with connect(target, identity="provider/ops") as ch:
            for t in tenants:
                provider_stub(ch).CreateTenant(ppb.CreateTenantRequest(name=t, cap_mbps=100.0), timeout=10)
        threads = [threading.Thread(target=writer, args=(target, t, acked, stop)) for t in tenants]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: writers are blocked in or between calls
        proc.wait(10)
        stop.set()
        for th in threads:
            th.join(15)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert 40 <= len(acked) < 6 * 60, "the kill must land in the middle of the writes"
    store = RulesStore(db)  # reopening replays the WAL
    try:
        assert store.integrity_check() == "ok"
        for tenant, name, revision in acked:
            rules = store.get(tenant)
            assert rules is not None and rules.entity(name) is not None, (tenant, name)
            assert rules.revision >= revision
    finally:
        store.close()
    proc2, target2 = start(db)  # and the service starts again on the same file
    try:
        with connect(target2, identity="tenant/t0") as ch:
            assert client_stub(ch).GetRules(pb.TenantRef(), timeout=10).tenant == "t0"
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(10)
