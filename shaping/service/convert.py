"""Protobuf messages to and from the rules model (shaping.rules)."""

from __future__ import annotations

from typing import Any

from shaping.rules.model import ClassRule, EntityRule, Match, RuleSet, StaticAction
from shaping.rules.validate import RulesError
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.spec.tenant import QoSRequirement

_MODE_TO_PB = {"static": pb.MODE_STATIC, "adaptive": pb.MODE_ADAPTIVE}
_QOS_FIELDS = ("max_p99_ms", "min_mbps", "max_loss", "app_floor")


def mode_from_pb(mode: int) -> str:
    """Model mode of a protobuf Mode (unspecified: static); RulesError on an unknown value."""
    if mode in (pb.MODE_UNSPECIFIED, pb.MODE_STATIC):
        return "static"
    if mode == pb.MODE_ADAPTIVE:
        return "adaptive"
    raise RulesError(f"mode {mode} is not one of MODE_STATIC (1), MODE_ADAPTIVE (2)")


def qos_from_pb(q: pb.QoS) -> QoSRequirement:
    """QoS requirement from its message (unset fields: not required)."""
    return QoSRequirement(**{f: getattr(q, f) if q.HasField(f) else None for f in _QOS_FIELDS})


def qos_to_pb(q: QoSRequirement) -> pb.QoS:
    """QoS message of a requirement."""
    return pb.QoS(**{f: getattr(q, f) for f in _QOS_FIELDS if getattr(q, f) is not None})


def entity_from_pb(e: pb.Entity) -> EntityRule:
    """Entity rule from its message; zero sizes take the model's defaults."""
    return EntityRule(name=e.name, kind=e.kind or "vm", cidrs=tuple(e.cidrs), mode=mode_from_pb(e.mode),
                      vcpus=e.vcpus or 2, memory_gib=e.memory_gib or 4.0)


def entity_to_pb(e: EntityRule) -> pb.Entity:
    """Entity message of a rule."""
    return pb.Entity(name=e.name, kind=e.kind, cidrs=list(e.cidrs), mode=_MODE_TO_PB[e.mode], vcpus=e.vcpus,
                     memory_gib=e.memory_gib)


def class_from_pb(c: pb.TrafficClass) -> ClassRule:
    """Class rule from its message; a zero load or flow count takes the model's defaults."""
    m, a = c.match, c.action
    return ClassRule(
        name=c.name, entity=c.entity, app=c.app or "web", mbps=c.mbps or 10.0, flows=c.flows or 1,
        match=Match(protocol=m.protocol or "tcp", ports=tuple(m.ports), dst_cidrs=tuple(m.dst_cidrs),
                    dscp=m.dscp if m.HasField("dscp") else None),
        action=StaticAction(rate_mbps=a.rate_mbps, ceil_mbps=a.ceil_mbps, burst_bytes=a.burst_bytes,
                            priority=a.priority, dscp=a.dscp, drop_prob=a.drop_prob, path=a.path),
        qos=qos_from_pb(c.qos),
    )


def class_to_pb(c: ClassRule) -> pb.TrafficClass:
    """Class message of a rule."""
    m, a = c.match, c.action
    match: dict[str, Any] = {"protocol": m.protocol, "ports": list(m.ports), "dst_cidrs": list(m.dst_cidrs)}
    if m.dscp is not None:
        match["dscp"] = m.dscp
    return pb.TrafficClass(
        name=c.name, entity=c.entity, app=c.app, mbps=c.mbps, flows=c.flows, match=pb.Match(**match),
        action=pb.StaticAction(rate_mbps=a.rate_mbps, ceil_mbps=a.ceil_mbps, burst_bytes=a.burst_bytes,
                               priority=a.priority, dscp=a.dscp, drop_prob=a.drop_prob, path=a.path),
        qos=qos_to_pb(c.qos),
    )


def rules_to_pb(r: RuleSet) -> pb.RuleSet:
    """RuleSet message of a tenant's rules."""
    return pb.RuleSet(tenant=r.tenant, cap_mbps=r.cap_mbps, revision=r.revision,
                      entities=[entity_to_pb(e) for e in r.entities], classes=[class_to_pb(c) for c in r.classes],
                      address_space=list(r.address_space))


def rules_from_pb(r: pb.RuleSet) -> RuleSet:
    """Tenant's rules from a RuleSet message."""
    return RuleSet(tenant=r.tenant, cap_mbps=r.cap_mbps, revision=r.revision,
                   entities=tuple(entity_from_pb(e) for e in r.entities),
                   classes=tuple(class_from_pb(c) for c in r.classes), address_space=tuple(r.address_space))
