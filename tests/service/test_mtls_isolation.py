"""mTLS: identities from client certificates; every Client RPC of one tenant against another is refused."""

from __future__ import annotations

import grpc
import pytest

from shaping import pki
from shaping.service import RulesServer, ServerTLS
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.channel import ClientTLS, client_stub, connect, provider_stub
from shaping.service.convert import class_to_pb, entity_to_pb, rules_to_pb
from shaping.store import RulesStore
from tests.rules.conftest import acme_rules
from tests.service.conftest import config


@pytest.fixture(scope="module")
def ca() -> pki.Credentials:
    return pki.new_ca()


@pytest.fixture
def tls_service(tmp_path, ca):
    store = RulesStore(tmp_path / "tls.db")
    srv = pki.issue_server(ca, ["127.0.0.1", "localhost"])
    server = RulesServer(store, config(), tls=ServerTLS(srv.cert_pem, srv.key_pem, ca.cert_pem)).start()
    channels: list[grpc.Channel] = []

    def open_as(role: str, name: str, issuer: pki.Credentials = ca) -> grpc.Channel:
        creds = pki.issue_client(issuer, role, name)  # type: ignore[arg-type]
        ch = connect(f"127.0.0.1:{server.port}", tls=ClientTLS(ca.cert_pem, creds.cert_pem, creds.key_pem))
        channels.append(ch)
        return ch

    try:
        open_as.target = f"127.0.0.1:{server.port}"  # type: ignore[attr-defined]
        yield store, open_as
    finally:
        for ch in channels:
            ch.close()
        server.stop(0)
        store.close()


def _setup(open_as) -> None:
    provider = provider_stub(open_as("provider", "ops"))
    for name in ("acme", "beta"):
        provider.CreateTenant(ppb.CreateTenantRequest(name=name, cap_mbps=100.0))
    acme = client_stub(open_as("tenant", "acme"))
    acme.PutRules(cpb.PutRulesRequest(rules=rules_to_pb(acme_rules())))
    acme.ReportStatus(pb.AgentStatus(applied_revision=2, reward=0.9, classes=[pb.ClassStatus(name="game")]))
    acme.PushAppMetrics(cpb.AppMetricsRequest(class_name="game", fps=60.0))


def _client_calls_against(tenant: str) -> dict[str, object]:
    rules = acme_rules()
    ref, name = pb.TenantRef(tenant=tenant), pb.NameRef(tenant=tenant, name="game")
    entity = cpb.EntityRequest(tenant=tenant, entity=entity_to_pb(rules.entities[0]))
    klass = cpb.ClassRequest(tenant=tenant, **{"class": class_to_pb(rules.classes[0])})
    return {
        "GetRules": ref,
        "PutRules": cpb.PutRulesRequest(rules=rules_to_pb(rules)),  # rules.tenant is "acme"
        "CreateEntity": entity, "GetEntity": pb.NameRef(tenant=tenant, name="web-vm"), "UpdateEntity": entity,
        "DeleteEntity": pb.NameRef(tenant=tenant, name="web-vm"),
        "CreateClass": klass, "GetClass": name, "UpdateClass": klass, "DeleteClass": name,
        "SetMode": cpb.SetModeRequest(tenant=tenant, mode=pb.MODE_STATIC),
        "SetQoS": cpb.SetQoSRequest(tenant=tenant, class_name="game", qos=pb.QoS(max_loss=0.5)),
        "GetAgentStatus": ref, "WatchAgentStatus": ref,
        "PushAppMetrics": cpb.AppMetricsRequest(tenant=tenant, class_name="game", fps=1.0),
        "WatchRules": cpb.WatchRulesRequest(tenant=tenant),
        "ReportStatus": pb.AgentStatus(tenant=tenant, reward=-1.0),
        "WatchAppMetrics": ref,
    }


def _call(stub, method: str, request):
    out = getattr(stub, method)(request, timeout=5)
    return next(out) if method.startswith("Watch") else out


def test_every_client_rpc_against_another_tenant_is_refused_and_leaks_nothing(tls_service):
    store, open_as = tls_service
    _setup(open_as)
    before = store.snapshot()
    beta = client_stub(open_as("tenant", "beta"))
    calls = _client_calls_against("acme")
    assert set(calls) == set(cpb.DESCRIPTOR.services_by_name["ClientService"].methods_by_name)
    for method, request in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            _call(beta, method, request)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        details = err.value.details()
        for secret in ("10.0.0.10", "27015", "web-vm", "0.9", "60"):
            assert secret not in details, (method, details)
    assert store.snapshot() == before
    # The same calls with beta's own tenant are answered (some NOT_FOUND: beta has no such entity).
    for method, request in _client_calls_against("beta").items():
        if method == "PutRules":
            continue
        try:
            _call(beta, method, request)
        except grpc.RpcError as err:
            assert err.code() != grpc.StatusCode.PERMISSION_DENIED, method


def test_provider_api_needs_the_provider_role(tls_service):
    store, open_as = tls_service
    _setup(open_as)
    acme = provider_stub(open_as("tenant", "acme"))
    requests = {
        "CreateTenant": ppb.CreateTenantRequest(name="x", cap_mbps=1.0), "DeleteTenant": pb.TenantRef(tenant="beta"),
        "ListTenants": ppb.ListTenantsRequest(), "GetTenantMetrics": pb.TenantRef(tenant="beta"),
        "GetFederationStatus": ppb.GetFederationStatusRequest(), "ReportFederationStatus": ppb.FederationStatus(),
        "GetHealth": ppb.HealthRequest(), "RevokeCertificate": ppb.RevokeCertificateRequest(serial="1f"),
        "ListRevoked": ppb.ListRevokedRequest(),
        "SetAddressSpace": ppb.SetAddressSpaceRequest(tenant="beta", address_space=["10.7.0.0/16"]),
    }
    assert set(requests) == set(ppb.DESCRIPTOR.services_by_name["ProviderService"].methods_by_name)
    before = store.snapshot()
    for method, request in requests.items():
        with pytest.raises(grpc.RpcError) as err:
            _call(acme, method, request)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
    assert store.snapshot() == before
    with pytest.raises(grpc.RpcError) as err:
        client_stub(open_as("provider", "ops")).GetRules(pb.TenantRef(tenant="acme"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_identity_comes_from_the_certificate_not_from_headers(tls_service):
    _, open_as = tls_service
    _setup(open_as)
    beta = client_stub(open_as("tenant", "beta"))
    with pytest.raises(grpc.RpcError) as err:
        beta.GetRules(pb.TenantRef(tenant="acme"), metadata=[("fedshape-identity", "tenant/acme")], timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert beta.GetRules(pb.TenantRef(), timeout=5).tenant == "beta"


def test_untrusted_or_missing_client_certificate_cannot_connect(tls_service, ca):
    _, open_as = tls_service
    rogue = client_stub(open_as("tenant", "acme", issuer=pki.new_ca("rogue")))
    with pytest.raises(grpc.RpcError) as err:
        rogue.GetRules(pb.TenantRef(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(open_as.target, grpc.ssl_channel_credentials(ca.cert_pem)) as bare:
        with pytest.raises(grpc.RpcError) as err:
            client_stub(bare).GetRules(pb.TenantRef(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_revoked_certificate_is_refused_on_every_call(tls_service, ca):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, open_as = tls_service
    _setup(open_as)
    creds = pki.issue_client(ca, "tenant", "acme")
    target = open_as.target
    ch = connect(target, tls=ClientTLS(ca.cert_pem, creds.cert_pem, creds.key_pem))
    try:
        acme = client_stub(ch)
        assert acme.GetRules(pb.TenantRef(), timeout=5).tenant == "acme"
        watch = acme.WatchRules(cpb.WatchRulesRequest(), timeout=30)
        assert next(watch).tenant == "acme"
        ops = provider_stub(open_as("provider", "ops"))
        ops.RevokeCertificate(ppb.RevokeCertificateRequest(serial=pki.certificate_serial(creds.cert_pem),
                                                           reason="key leaked"))
        listed = ops.ListRevoked(ppb.ListRevokedRequest()).certificates
        assert [(c.serial, c.reason, c.actor) for c in listed] == [
            (pki.certificate_serial(creds.cert_pem), "key leaked", "provider/ops")]
        # The same connection, already open: the next call is refused, the health check too.
        for call in (lambda: acme.GetRules(pb.TenantRef(), timeout=5),
                     lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()
        # A watch that was open ends within a poll interval.
        with pytest.raises(grpc.RpcError) as err:
            next(watch)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()
        # Another certificate of the same tenant still works.
        assert client_stub(open_as("tenant", "acme")).GetRules(pb.TenantRef(), timeout=5).tenant == "acme"
        with pytest.raises(grpc.RpcError) as err:
            ops.RevokeCertificate(ppb.RevokeCertificateRequest(serial="not hex"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        ch.close()
