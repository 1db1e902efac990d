"""Rules to and from plain dicts (JSON in the store, YAML or JSON files for the CLI)."""

from __future__ import annotations

from typing import Any

from shaping.rules.model import ClassRule, EntityRule, Match, RuleSet, StaticAction
from shaping.rules.validate import RulesError
from shaping.spec.tenant import QoSRequirement


def rules_to_dict(rules: RuleSet) -> dict[str, Any]:
    """A JSON-ready dict of the rules (tuples become lists)."""
    return {
        "tenant": rules.tenant,
        "cap_mbps": rules.cap_mbps,
        "revision": rules.revision,
        "entities": [entity_to_dict(e) for e in rules.entities],
        "classes": [class_to_dict(c) for c in rules.classes],
        # Only when set: documents of tenants without one stay as they were.
        **({"address_space": list(rules.address_space)} if rules.address_space else {}),
    }


def entity_to_dict(e: EntityRule) -> dict[str, Any]:
    """A JSON-ready dict of one entity."""
    return {"name": e.name, "kind": e.kind, "cidrs": list(e.cidrs), "mode": e.mode, "vcpus": e.vcpus,
            "memory_gib": e.memory_gib}


def class_to_dict(c: ClassRule) -> dict[str, Any]:
    """A JSON-ready dict of one class."""
    m, a, q = c.match, c.action, c.qos
    return {
        "name": c.name, "entity": c.entity, "app": c.app, "mbps": c.mbps, "flows": c.flows,
        "match": {"protocol": m.protocol, "ports": list(m.ports), "dst_cidrs": list(m.dst_cidrs), "dscp": m.dscp},
        "action": {"rate_mbps": a.rate_mbps, "ceil_mbps": a.ceil_mbps, "burst_bytes": a.burst_bytes,
                   "priority": a.priority, "dscp": a.dscp, "drop_prob": a.drop_prob, "path": a.path},
        "qos": {"max_p99_ms": q.max_p99_ms, "min_mbps": q.min_mbps, "max_loss": q.max_loss,
                "app_floor": q.app_floor},
    }


def _pick(d: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise RulesError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise RulesError(f"{where} has unknown fields {unknown}; allowed: {sorted(allowed)}")
    return d


def entity_from_dict(d: Any) -> EntityRule:
    """An entity from a dict; RulesError on unknown fields or wrong types."""
    d = _pick(d, "entity", {"name", "kind", "cidrs", "mode", "vcpus", "memory_gib"})
    try:
        return EntityRule(name=str(d["name"]), kind=str(d.get("kind", "vm")), cidrs=tuple(map(str, d.get("cidrs", []))),
                          mode=str(d.get("mode", "static")), vcpus=int(d.get("vcpus", 2)),
                          memory_gib=float(d.get("memory_gib", 4.0)))
    except (KeyError, TypeError, ValueError) as err:
        raise RulesError(f"entity: bad or missing field: {err}") from None


def class_from_dict(d: Any) -> ClassRule:
    """A class from a dict; RulesError on unknown fields or wrong types."""
    d = _pick(d, "class", {"name", "entity", "app", "mbps", "flows", "match", "action", "qos"})
    where = f"class {d.get('name')!r}"
    m = _pick(d.get("match", {}), f"{where}: match", {"protocol", "ports", "dst_cidrs", "dscp"})
    a = _pick(d.get("action", {}), f"{where}: action",
              {"rate_mbps", "ceil_mbps", "burst_bytes", "priority", "dscp", "drop_prob", "path"})
    q = _pick(d.get("qos", {}), f"{where}: qos", {"max_p99_ms", "min_mbps", "max_loss", "app_floor"})
    try:
        return ClassRule(
            name=str(d["name"]), entity=str(d["entity"]), app=str(d.get("app", "web")),
            mbps=float(d.get("mbps", 10.0)), flows=int(d.get("flows", 1)),
            match=Match(protocol=str(m.get("protocol", "tcp")), ports=tuple(int(p) for p in m.get("ports", [])),
                        dst_cidrs=tuple(map(str, m.get("dst_cidrs", []))),
                        dscp=None if m.get("dscp") is None else int(m["dscp"])),
            action=StaticAction(
                rate_mbps=float(a.get("rate_mbps", 1.0)), ceil_mbps=float(a.get("ceil_mbps", 1.0)),
                burst_bytes=int(a.get("burst_bytes", 0)), priority=int(a.get("priority", 0)),
                dscp=int(a.get("dscp", 0)), drop_prob=float(a.get("drop_prob", 0.0)), path=str(a.get("path", "")),
            ),
            qos=QoSRequirement(**{k: None if v is None else float(v) for k, v in q.items()}),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RulesError(f"{where}: bad or missing field: {err}") from None


def rules_from_dict(d: Any) -> RuleSet:
    """Rules from a dict (as rules_to_dict writes them)."""
    d = _pick(d, "rules", {"tenant", "cap_mbps", "revision", "entities", "classes", "address_space"})
    try:
        return RuleSet(tenant=str(d["tenant"]), cap_mbps=float(d.get("cap_mbps", 0.0)),
                       revision=int(d.get("revision", 0)),
                       entities=tuple(entity_from_dict(e) for e in d.get("entities", [])),
                       classes=tuple(class_from_dict(c) for c in d.get("classes", [])),
                       address_space=tuple(str(n) for n in d.get("address_space", [])))
    except (KeyError, TypeError, ValueError) as err:
        raise RulesError(f"rules: bad or missing field: {err}") from None
