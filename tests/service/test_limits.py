"""Limits on open streams and running calls: one tenant's watches never starve the others; late writes are dropped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shaping.service import RulesServer
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.auth import Authenticator, CallError
from shaping.service.channel import client_stub, connect, provider_stub
from shaping.service.convert import rules_to_pb
from shaping.service.limits import CallLimiter, CallLimits
from shaping.store import RulesStore
from tests.rules.conftest import acme_rules
from tests.service.conftest import config


@pytest.fixture
def small_server(tmp_path) -> Iterator[RulesServer]:
    """A server with 2 call threads and room for 8 watches, acme and beta registered."""
    store = RulesStore(tmp_path / "l.db")
    cfg = replace(config(), active_calls=2, max_watches=8, max_watches_per_caller=4)
    server = RulesServer(store, cfg, insecure_loopback=True).start()
    target = f"127.0.0.1:{server.port}"
    with connect(target, identity="provider/ops") as ch:
        for name in ("acme", "beta"):
            provider_stub(ch).CreateTenant(ppb.CreateTenantRequest(name=name, cap_mbps=100.0))
    try:
        yield server
    finally:
        server.stop(0)
        store.close()


def test_one_tenants_watches_leave_room_for_everyone_else(small_server) -> None:
    # Before the limits, 12 watches of one tenant took the 8 watch threads and then the 2 call threads:
    # every other call, the health check included, waited for its deadline.
    target = f"127.0.0.1:{small_server.port}"
    acme = connect(target, identity="tenant/acme")
    streams = [client_stub(acme).WatchAgentStatus(pb.TenantRef(), timeout=30) for _ in range(12)]
    codes = []
    for s in streams:
        try:
            next(s)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
            assert "streams open" in err.details()
    try:
        assert codes.count(grpc.StatusCode.OK) == 4
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 8
        with connect(target, identity="tenant/beta") as beta, connect(target, identity="provider/ops") as ops:
            assert client_stub(beta).GetAgentStatus(pb.TenantRef(), timeout=5).tenant == "beta"
            assert provider_stub(ops).GetHealth(ppb.HealthRequest(), timeout=5).serving
            health = health_pb2_grpc.HealthStub(beta).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for s in streams:
            s.cancel()
    # Closed streams give their places back.
    deadline = time.monotonic() + 10
    while small_server.limiter.open_calls("tenant/acme", stream=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert small_server.limiter.open_calls("tenant/acme", stream=True) == 0
    again = client_stub(acme).WatchAgentStatus(pb.TenantRef(), timeout=30)
    assert next(again).tenant == "acme"
    again.cancel()
    acme.close()


def test_the_global_stream_limit_refuses_the_next_caller() -> None:
    limiter = CallLimiter(CallLimits(streams=3, streams_per_caller=2, calls_per_caller=1), Authenticator())
    slots = [limiter.admit("tenant/a", stream=True), limiter.admit("tenant/a", stream=True),
             limiter.admit("tenant/b", stream=True)]
    with pytest.raises(CallError) as err:
        limiter.admit("tenant/c", stream=True)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "service has 3 streams" in err.value.message
    unary = limiter.admit("tenant/c", stream=False)  # unary calls are counted apart from streams
    with pytest.raises(CallError, match="calls running"):
        limiter.admit("tenant/c", stream=False)
    unary.release()
    slots[0].release()
    slots[0].release()  # a second release (callback and generator both) gives back one place only
    limiter.admit("tenant/c", stream=True)
    with pytest.raises(CallError):
        limiter.admit("tenant/d", stream=True)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="streams_per_caller"):
        CallLimits(streams_per_caller=0)


def test_a_write_whose_caller_gave_up_is_not_committed(small_server, monkeypatch) -> None:
    store = small_server.store
    update = store.update

    def slow_update(*args, **kwargs):
        time.sleep(1.0)  # a write queued behind others: it runs after its caller's deadline
        return update(*args, **kwargs)

    monkeypatch.setattr(store, "update", slow_update)
    before = store.get("acme").revision
    with connect(f"127.0.0.1:{small_server.port}", identity="tenant/acme") as ch:
        with pytest.raises(grpc.RpcError) as err:
            client_stub(ch).PutRules(cpb.PutRulesRequest(rules=rules_to_pb(acme_rules())), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.5)
        assert store.get("acme").revision == before
        # With time to spare the same write goes through.
        client_stub(ch).PutRules(cpb.PutRulesRequest(rules=rules_to_pb(acme_rules())), timeout=10)
    assert store.get("acme").revision == before + 1
