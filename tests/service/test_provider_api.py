"""Provider API, gRPC health and reflection, and the Prometheus exposition."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shaping.service import RulesServer
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.channel import client_stub, provider_stub
from shaping.store import RulesStore
from tests.service.conftest import config


def test_tenants_metrics_federation_health(with_acme):
    p = with_acme.provider()
    with_acme.tenant().ReportStatus(pb.AgentStatus(applied_revision=2, reward=1.25, fallback=False, mode="mixed",
                                                   sla_ok_fraction=0.5))
    p.CreateTenant(ppb.CreateTenantRequest(name="beta", cap_mbps=50.0))
    listed = p.ListTenants(ppb.ListTenantsRequest()).tenants
    assert [(t.name, t.classes, t.adaptive_entities) for t in listed] == [("acme", 3, 1), ("beta", 0, 0)]
    assert listed[0].agent.reward == 1.25 and listed[1].agent.stale
    assert p.GetTenantMetrics(pb.TenantRef(tenant="acme")).agent.sla_ok_fraction == 0.5
    p.ReportFederationStatus(ppb.FederationStatus(round=7, epsilon_spent=1.5, delta=1e-5, clients=3))
    fed = p.GetFederationStatus(ppb.GetFederationStatusRequest())
    assert (fed.round, fed.epsilon_spent, fed.clients) == (7, 1.5, 3) and fed.updated_at > 0
    health = p.GetHealth(ppb.HealthRequest())
    assert (health.tenants, health.agents_reporting, health.agents_stale) == (2, 1, 1)
    with pytest.raises(grpc.RpcError) as err:
        p.CreateTenant(ppb.CreateTenantRequest(name="beta", cap_mbps=50.0))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        p.CreateTenant(ppb.CreateTenantRequest(name="big", cap_mbps=1e6))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "largest provider link" in err.value.details()
    p.DeleteTenant(pb.TenantRef(tenant="beta"))
    with pytest.raises(grpc.RpcError) as err:
        p.GetTenantMetrics(pb.TenantRef(tenant="beta"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_roles_are_separate(with_acme):
    with pytest.raises(grpc.RpcError) as err:
        provider_stub(with_acme.channel("tenant/acme")).ListTenants(ppb.ListTenantsRequest())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        client_stub(with_acme.channel("provider/ops")).GetRules(pb.TenantRef(tenant="acme"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpc_health_and_reflection(running):
    ch = running.channel("provider/ops")
    health = health_pb2_grpc.HealthStub(ch)
    for name in ("", "fedshape.v1.ClientService", "fedshape.v1.ProviderService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"fedshape.v1.ClientService", "fedshape.v1.ProviderService", "grpc.health.v1.Health"} <= names


def _scrape(server: RulesServer) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()


def test_prometheus_exposition_has_per_tenant_labels_in_base_units(tmp_path):
    store = RulesStore(tmp_path / "m.db")
    server = RulesServer(store, config(), insecure_loopback=True, metrics_address=("127.0.0.1", 0)).start()
    try:
        store.create_tenant("acme", 100.0)
        store.put_status("acme", {"reward": 0.75, "fallback": True, "sla_ok_fraction": 0.5,
                                  "classes": [{"name": "game", "loss": 0.02, "delay_p99_ms": 40.0,
                                               "delivered_mbps": 8.0}]})
        store.put_app_metrics("acme", "game", {"fps": 59.0})
        store.put_federation({"round": 4, "epsilon_spent": 2.5, "tenants": [{"tenant": "acme", "epsilon_spent": 1.25}]})
        text = _scrape(server)
    finally:
        server.stop(0)
        store.close()
    assert 'fedshape_agent_reward{tenant="acme"} 0.75' in text
    assert 'fedshape_agent_fallback{tenant="acme"} 1.0' in text
    assert 'fedshape_agent_sla_ok_ratio{tenant="acme"} 0.5' in text
    assert 'fedshape_tenant_cap_bytes_per_second{tenant="acme"} 1.25e+07' in text
    assert 'fedshape_class_loss_ratio{class="game",tenant="acme"} 0.02' in text
    assert 'fedshape_class_delay_p99_seconds{class="game",tenant="acme"} 0.04' in text
    assert 'fedshape_class_delivered_bytes_per_second{class="game",tenant="acme"} 1e+06' in text
    assert 'fedshape_app_metric{class="game",name="fps",tenant="acme"} 59.0' in text
    assert 'fedshape_tenant_privacy_epsilon{tenant="acme"} 1.25' in text
    assert "fedshape_federation_epsilon 2.5" in text
    assert "python_gc" not in text  # its own registry, not the process-global one


#: promtool's "metric names should not contain abbreviated units" list, and units that are not base units.
ABBREVIATED = {"s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d", "mbps", "kbps"}
NOT_BASE = ("milliseconds", "microseconds", "kilobytes", "megabytes", "megabits", "bits", "fraction", "percent")


def test_metric_names_follow_prometheus_conventions(tmp_path):
    store = RulesStore(tmp_path / "n.db")
    server = RulesServer(store, config(), insecure_loopback=True)
    try:
        names = {m.name for m in server.registry.collect()}
    finally:
        server.stop(0)
        store.close()
    assert {"fedshape_rpc_requests", "fedshape_rpc_duration_seconds", "fedshape_tenant_cap_bytes_per_second"} <= names
    for name in names:
        parts = name.split("_")
        assert not ABBREVIATED & set(parts), f"{name}: abbreviated unit"
        assert not any(unit in parts for unit in NOT_BASE), f"{name}: not a base unit"


def test_requests_are_counted_per_method_and_code(with_acme):
    t = with_acme.tenant()
    t.GetRules(pb.TenantRef())
    with pytest.raises(grpc.RpcError):
        t.GetRules(pb.TenantRef(tenant="beta"))
    reg = with_acme.server.registry
    method = "/fedshape.v1.ClientService/GetRules"
    assert reg.get_sample_value("fedshape_rpc_requests_total", {"method": method, "code": "OK"}) == 1
    assert reg.get_sample_value("fedshape_rpc_requests_total", {"method": method, "code": "PERMISSION_DENIED"}) == 1
    assert reg.get_sample_value("fedshape_rpc_duration_seconds_count", {"method": method}) == 2


def test_metrics_off_loopback_need_consent(tmp_path):
    store = RulesStore(tmp_path / "r.db")
    try:
        with pytest.raises(ValueError, match=r"metrics on '0\.0\.0\.0' refused"):
            RulesServer(store, config(), insecure_loopback=True, metrics_address=("0.0.0.0", 0))
        RulesServer(store, config(), insecure_loopback=True, metrics_address=("0.0.0.0", 0),
                    metrics_remote=True).stop(0)
    finally:
        store.close()


def test_federation_status_carries_each_tenants_epsilon(with_acme):
    ops = with_acme.provider()
    ok = ppb.FederationStatus(round=2, epsilon_spent=1.0, delta=1e-5,
                                       tenants=[ppb.TenantPrivacy(tenant="acme", epsilon_spent=0.5)])
    ops.ReportFederationStatus(ok)
    assert ops.GetFederationStatus(ppb.GetFederationStatusRequest()).tenants[0].epsilon_spent == 0.5
    for bad, code in (
        (ppb.TenantPrivacy(tenant="ghost", epsilon_spent=0.5), grpc.StatusCode.NOT_FOUND),
        (ppb.TenantPrivacy(tenant="acme", epsilon_spent=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            ops.ReportFederationStatus(ppb.FederationStatus(round=3, tenants=[bad]))
        assert err.value.code() == code


def test_plaintext_off_loopback_is_refused(tmp_path):
    store = RulesStore(tmp_path / "x.db")
    try:
        with pytest.raises(ValueError, match=r"plaintext on '0\.0\.0\.0:0' refused"):
            RulesServer(store, config(), address="0.0.0.0:0", insecure_loopback=True)
        with pytest.raises(ValueError, match="refused"):
            RulesServer(store, config(), address="127.0.0.1:0")
    finally:
        store.close()


def test_the_provider_assigns_address_spaces(with_acme):
    from shaping.service._proto.fedshape.v1 import client_pb2 as cpb

    ops = with_acme.provider()
    # acme's entities (10.0.0.10/32, 10.0.1.0/24) must fit the space it is given.
    with pytest.raises(grpc.RpcError) as err:
        ops.SetAddressSpace(ppb.SetAddressSpaceRequest(tenant="acme", address_space=["10.0.0.0/24"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside the tenant's address space" in \
        err.value.details()
    rules = ops.SetAddressSpace(ppb.SetAddressSpaceRequest(tenant="acme", address_space=["10.0.0.7/16"]))
    assert list(rules.address_space) == ["10.0.0.0/16"]
    acme = with_acme.tenant()
    assert list(acme.GetRules(pb.TenantRef()).address_space) == ["10.0.0.0/16"]
    with pytest.raises(grpc.RpcError) as err:
        acme.CreateEntity(cpb.EntityRequest(entity=pb.Entity(name="far", cidrs=["192.0.2.1/32"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside" in err.value.details()
    # A tenant's space is nobody else's: neither another space nor another tenant's entities may touch it.
    with pytest.raises(grpc.RpcError) as err:
        ops.CreateTenant(ppb.CreateTenantRequest(name="beta", cap_mbps=10.0, address_space=["10.0.128.0/17"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "overlaps another tenant's" in err.value.details()
    assert "beta" not in {t.name for t in ops.ListTenants(ppb.ListTenantsRequest()).tenants}  # nothing written
    ops.CreateTenant(ppb.CreateTenantRequest(name="beta", cap_mbps=10.0))
    with pytest.raises(grpc.RpcError) as err:
        with_acme.tenant("beta").CreateEntity(cpb.EntityRequest(entity=pb.Entity(name="vm", cidrs=["10.0.200.1/32"])))
    assert "overlaps another tenant's" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        ops.SetAddressSpace(ppb.SetAddressSpaceRequest(tenant="ghost", address_space=["10.9.0.0/16"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
