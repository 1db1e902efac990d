"""Client API over a loopback channel: CRUD, modes, QoS, status, watches, and the codes of each failure."""

from __future__ import annotations

import threading

import grpc
import pytest

from shaping.rules import RuleSet
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.convert import class_to_pb, entity_to_pb, rules_from_pb
from tests.rules.conftest import acme_rules


def code_of(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)
    return err.value.code(), err.value.details()


def test_get_rules_round_trips_the_model(with_acme):
    got = rules_from_pb(with_acme.tenant().GetRules(pb.TenantRef()))
    expect = acme_rules()
    assert got.entities == expect.entities and got.classes == expect.classes
    assert got.revision == 2  # create (1), put (2)


def test_entity_and_class_crud(with_acme):
    t = with_acme.tenant()
    ent = pb.Entity(name="db", kind="vm", cidrs=["10.0.2.5/32"], mode=pb.MODE_STATIC)
    assert t.CreateEntity(cpb.EntityRequest(entity=ent)).revision == 3
    assert t.GetEntity(pb.NameRef(name="db")).cidrs == ["10.0.2.5/32"]
    assert code_of(t.CreateEntity, cpb.EntityRequest(entity=ent))[0] == grpc.StatusCode.ALREADY_EXISTS
    ent.cidrs[:] = ["10.0.2.6/32"]
    t.UpdateEntity(cpb.EntityRequest(entity=ent))
    assert t.GetEntity(pb.NameRef(name="db")).cidrs == ["10.0.2.6/32"]
    cls = pb.TrafficClass(name="sql", entity="db", app="transactions", match=pb.Match(protocol="tcp", ports=[5432]),
                          action=pb.StaticAction(rate_mbps=5, ceil_mbps=10, priority=1, dscp=26))
    t.CreateClass(cpb.ClassRequest(**{"class": cls}))
    assert t.GetClass(pb.NameRef(name="sql")).action.dscp == 26
    code, msg = code_of(t.DeleteEntity, pb.NameRef(name="db"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "still has classes ['sql']" in msg
    cls.action.dscp = 10
    t.UpdateClass(cpb.ClassRequest(**{"class": cls}))
    assert t.GetClass(pb.NameRef(name="sql")).action.dscp == 10
    t.DeleteClass(pb.NameRef(name="sql"))
    rules = t.DeleteEntity(pb.NameRef(name="db"))
    assert [e.name for e in rules.entities] == ["web-vm", "net"]
    assert code_of(t.GetClass, pb.NameRef(name="sql"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(t.UpdateEntity, cpb.EntityRequest(entity=ent))[0] == grpc.StatusCode.NOT_FOUND


def test_invalid_write_names_the_field_and_writes_nothing(with_acme):
    t = with_acme.tenant()
    before = with_acme.store.snapshot()
    game = class_to_pb(acme_rules().classes[0])
    game.action.dscp = 99
    code, msg = code_of(t.UpdateClass, cpb.ClassRequest(**{"class": game}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DSCP 99 outside 0..63" in msg
    overlapping = class_to_pb(acme_rules().classes[2])
    overlapping.name = "site2"
    code, msg = code_of(t.CreateClass, cpb.ClassRequest(**{"class": overlapping}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "classes 'site' and 'site2' overlap" in msg
    assert with_acme.store.snapshot() == before


def test_expect_revision_conflict(with_acme):
    t = with_acme.tenant()
    rules = t.GetRules(pb.TenantRef())
    ent = entity_to_pb(acme_rules().entities[1])
    ent.cidrs[:] = ["10.0.3.0/24"]
    assert t.UpdateEntity(cpb.EntityRequest(entity=ent, expect_revision=rules.revision)).revision == rules.revision + 1
    code, msg = code_of(t.UpdateEntity, cpb.EntityRequest(entity=ent, expect_revision=rules.revision))
    assert code == grpc.StatusCode.ABORTED and f"at revision {rules.revision + 1}" in msg


def test_mode_and_qos(with_acme):
    t = with_acme.tenant()
    rules = t.SetMode(cpb.SetModeRequest(mode=pb.MODE_ADAPTIVE))
    assert all(e.mode == pb.MODE_ADAPTIVE for e in rules.entities)
    rules = t.SetMode(cpb.SetModeRequest(entity="net", mode=pb.MODE_STATIC))
    assert [e.mode for e in rules.entities] == [pb.MODE_ADAPTIVE, pb.MODE_STATIC]
    assert code_of(t.SetMode, cpb.SetModeRequest(mode=pb.MODE_UNSPECIFIED))[0] == grpc.StatusCode.INVALID_ARGUMENT
    rules = t.SetQoS(cpb.SetQoSRequest(class_name="site", qos=pb.QoS(max_p99_ms=100.0, app_floor=0.9)))
    site = rules_from_pb(rules).klass("site")
    assert site is not None and site.qos.max_p99_ms == 100.0 and site.qos.min_mbps is None
    code, msg = code_of(t.SetQoS, cpb.SetQoSRequest(class_name="site", qos=pb.QoS(max_loss=3.0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_loss must be in [0, 1]" in msg


def test_unregistered_tenant_and_missing_identity(running):
    code, msg = code_of(running.tenant("ghost").GetRules, pb.TenantRef())
    assert code == grpc.StatusCode.NOT_FOUND and "ask the provider" in msg
    from shaping.service.channel import client_stub, connect

    anon = connect(running.target)
    running.channels.append(anon)
    assert code_of(client_stub(anon).GetRules, pb.TenantRef())[0] == grpc.StatusCode.UNAUTHENTICATED


def test_status_report_and_watch(with_acme):
    t = with_acme.tenant()
    assert t.GetAgentStatus(pb.TenantRef()).stale
    stream = t.WatchAgentStatus(pb.TenantRef())
    first = next(stream)
    assert first.reported_at == 0
    report = pb.AgentStatus(applied_revision=2, reward=0.5, fallback=True, fallback_reason="policy too slow",
                            mode="mixed", classes=[pb.ClassStatus(name="game", delivered_mbps=9.5, sla_ok=True)])
    t.ReportStatus(report)
    second = next(stream)
    stream.cancel()
    assert second.reward == 0.5 and second.fallback and not second.stale and second.classes[0].name == "game"
    got = t.GetAgentStatus(pb.TenantRef())
    assert got.applied_revision == 2 and got.fallback_reason == "policy too slow"
    bad = pb.AgentStatus(reward=float("nan"))
    assert code_of(t.ReportStatus, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_push_app_metrics(with_acme):
    t = with_acme.tenant()
    t.PushAppMetrics(cpb.AppMetricsRequest(class_name="game", fps=58.0))
    t.PushAppMetrics(cpb.AppMetricsRequest(class_name="site", completion_rate=0.97))
    assert with_acme.store.app_metrics("acme")["game"]["fps"][0] == 58.0
    code, msg = code_of(t.PushAppMetrics, cpb.AppMetricsRequest(class_name="game", completion_rate=1.5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "completion_rate must be in [0, 1]" in msg
    assert code_of(t.PushAppMetrics, cpb.AppMetricsRequest(class_name="nope", fps=1))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(t.PushAppMetrics, cpb.AppMetricsRequest(class_name="game"))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_rules_sends_each_new_revision(with_acme):
    t = with_acme.tenant()
    stream = t.WatchRules(cpb.WatchRulesRequest(after_revision=0))
    got: list[RuleSet] = [rules_from_pb(next(stream))]
    assert got[0].revision == 2

    def change() -> None:
        with_acme.tenant().SetMode(cpb.SetModeRequest(entity="net", mode=pb.MODE_ADAPTIVE))

    threading.Thread(target=change).start()
    got.append(rules_from_pb(next(stream)))
    stream.cancel()
    assert got[1].revision == 3
    net = got[1].entity("net")
    assert net is not None and net.mode == "adaptive"


def test_addresses_are_normalized_and_not_shared_between_tenants(with_acme):
    from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb

    acme = with_acme.tenant()
    rules = acme.CreateEntity(cpb.EntityRequest(entity=pb.Entity(name="lab", kind="subnet", cidrs=["10.0.7.9/24"])))
    assert list(next(e for e in rules.entities if e.name == "lab").cidrs) == ["10.0.7.0/24"]
    with_acme.provider().CreateTenant(ppb.CreateTenantRequest(name="beta", cap_mbps=50.0))
    beta = with_acme.tenant("beta")
    for taken in ("10.0.0.10/32", "10.0.7.128/25", "10.0.0.0/8"):
        code, details = code_of(beta.CreateEntity, cpb.EntityRequest(entity=pb.Entity(name="vm", cidrs=[taken])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "overlaps another tenant's addresses" in details
        assert "acme" not in details
    beta.CreateEntity(cpb.EntityRequest(entity=pb.Entity(name="vm", cidrs=["10.1.0.10/32"])))
    code, details = code_of(acme.CreateEntity, cpb.EntityRequest(entity=pb.Entity(name="x", cidrs=["10.1.0.0/24"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "overlaps another tenant's addresses" in details
