"""Kill the service with SIGKILL in the middle of a stream of writes: every acknowledged write survives."""

from __future__ import annotations

import threading
import time

from experiments.bench_api import Service
from experiments.bench_crash import Acked, write_entities
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.channel import client_stub, connect, provider_stub
from shaping.store import RulesStore


def test_sigkill_mid_write_loses_no_acknowledged_write(tmp_path):
    db = tmp_path / "crash.db"
    svc = Service(tmp_path, False, 16, db=db)
    target = svc.target
    tenants = [f"t{i}" for i in range(6)]
    acked: Acked = []
    stop = threading.Event()
    try:
        with connect(target, identity="provider/ops") as ch:
            for t in tenants:
                provider_stub(ch).CreateTenant(ppb.CreateTenantRequest(name=t, cap_mbps=100.0), timeout=10)
        names = [f"e{i}" for i in range(60)]
        threads = [threading.Thread(target=write_entities, args=(target, t, names, acked, stop, None, k))
                   for k, t in enumerate(tenants)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        svc.kill()  # mid-stream: writers are blocked in or between calls
        stop.set()
        for th in threads:
            th.join(15)
    finally:
        svc.stop()
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
    svc2 = Service(tmp_path, False, 16, db=db)  # and the service starts again on the same file
    try:
        with connect(svc2.target, identity="tenant/t0") as ch:
            assert client_stub(ch).GetRules(pb.TenantRef(), timeout=10).tenant == "t0"
    finally:
        svc2.stop()
