"""The tenant's nftables table as JSON (libnftables' JSON schema): chains and per-class rules, pure."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from shaping.enforce.overlaps import check_disjoint_classes
from shaping.enforce.target import EnforceTarget
from shaping.spec.plan import ClassShaping, ShapingPlan
from shaping.spec.tenant import TenantSpec

FAMILY = "inet"
#: Drop probabilities are compared against numgen random mod DROP_SCALE (1 ppm resolution).
DROP_SCALE = 1_000_000
#: Before conntrack's mangle work and the routing decision (NF_IP_PRI_MANGLE is -150).
HOOK_PRIO = -150

CLASSIFY = "classify"
EGRESS = "egress"


@dataclass(frozen=True)
class ChainSpec:
    """A chain of the tenant's table; base chains carry a hook."""

    name: str
    type: str | None = None
    hook: str | None = None

    def json(self, table: str) -> dict[str, Any]:
        """The chain object of nft's JSON schema."""
        out: dict[str, Any] = {"family": FAMILY, "table": table, "name": self.name}
        if self.hook:
            out.update({"type": self.type, "hook": self.hook, "prio": HOOK_PRIO, "policy": "accept"})
        return out


#: Forwarded traffic is marked in prerouting and local traffic in a route chain on output (a mark set
#: there makes the kernel redo the routing decision), both before routing, so the policy rules see the
#: mark. Priority and drops are set in postrouting: ip_forward() rewrites skb->priority from the TOS
#: (net/ipv4/ip_forward.c), so a priority set before routing would be lost.
CHAINS: tuple[ChainSpec, ...] = (
    ChainSpec(CLASSIFY),
    ChainSpec("pre", "filter", "prerouting"),
    ChainSpec("out", "route", "output"),
    ChainSpec(EGRESS, "filter", "postrouting"),
)


@dataclass(frozen=True)
class RuleSpec:
    """One desired rule: its chain, stable key and expression list; the comment carries key and signature."""

    chain: str
    key: str
    expr: tuple[str, ...]
    """Each statement as canonical JSON, so the spec is hashable and comparable."""

    @cached_property
    def sig(self) -> str:
        """Content signature: a rule whose signature differs from the kernel's is replaced."""
        return hashlib.blake2s("\n".join(self.expr).encode(), digest_size=6).hexdigest()

    @property
    def comment(self) -> str:
        """What the rule's comment holds (nft keeps up to 128 bytes)."""
        return f"{self.key}|{self.sig}"

    def json(self, table: str, handle: int | None = None) -> dict[str, Any]:
        """The rule object of nft's JSON schema."""
        out: dict[str, Any] = {
            "family": FAMILY,
            "table": table,
            "chain": self.chain,
            "comment": self.comment,
            "expr": [json.loads(e) for e in self.expr],
        }
        if handle is not None:
            out["handle"] = handle
        return out


def parse_comment(comment: str | None) -> tuple[str, str] | None:
    """(key, signature) of one of our rules, None for a rule FedShape did not write."""
    if not comment or "|" not in comment:
        return None
    key, sig = comment.rsplit("|", 1)
    return key, sig


def _stmts(*items: dict[str, Any]) -> tuple[str, ...]:
    return tuple(json.dumps(i, sort_keys=True, separators=(",", ":")) for i in items)


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _set(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _payload(proto: str, name: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": name}}


def _mangle(key: dict[str, Any], value: Any) -> dict[str, Any]:
    return {"mangle": {"key": key, "value": value}}


def _prefixes(cidrs: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Addresses as nft prefixes, by IP family (ip, ip6)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        fam = "ip" if net.version == 4 else "ip6"
        out.setdefault(fam, []).append({"prefix": {"addr": str(net.network_address), "len": net.prefixlen}})
    return out


def classify_rules(spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget) -> list[RuleSpec]:
    """Per class, family and port direction: match, then set the class's fwmark and DSCP, then return.

    A class matches its entity's source addresses and its protocol, and where given its remote
    addresses (`dst_cidrs`), arriving DSCP and ports. The first class (in spec order) that matches a
    packet wins. Ports match either direction, since an entity may be the client or the server of
    its application.

    Raises:
        SpecError: two classes could match the same packet (``check_disjoint_classes``).
    """
    check_disjoint_classes(spec)
    out: list[RuleSpec] = []
    for i, (tc, cs) in enumerate(zip(spec.classes, plan.classes, strict=True)):
        destinations = _prefixes(tc.dst_cidrs)
        for fam, prefixes in _prefixes(spec.entities[spec.entity_index(tc.entity)].cidrs).items():
            base = [_match(_payload(fam, "saddr"), _set(prefixes)), _match({"meta": {"key": "l4proto"}}, tc.protocol)]
            if tc.dst_cidrs:
                if fam not in destinations:  # no destination of this family: nothing of it can match
                    continue
                base.append(_match(_payload(fam, "daddr"), _set(destinations[fam])))
            if tc.match_dscp is not None:
                base.append(_match(_payload(fam, "dscp"), tc.match_dscp))
            tail = [
                _mangle({"meta": {"key": "mark"}}, target.mark(i)),
                _mangle(_payload(fam, "dscp"), cs.dscp),
                {"return": None},
            ]
            if not tc.ports:
                out.append(RuleSpec(CLASSIFY, f"c{i}.{fam}", _stmts(*base, *tail)))
                continue
            for direction in ("dport", "sport"):
                port_match = _match(_payload("th", direction), _set(sorted(tc.ports)))
                out.append(RuleSpec(CLASSIFY, f"c{i}.{fam}.{direction}", _stmts(*base, port_match, *tail)))
    return out


def egress_rules(plan: ShapingPlan, target: EnforceTarget) -> list[RuleSpec]:
    """Per class: the probabilistic drop (when its probability is > 0), then the HTB class via skb priority."""
    out: list[RuleSpec] = []
    for i, cs in enumerate(plan.classes):
        mark = _match({"meta": {"key": "mark"}}, target.mark(i))
        threshold = round(cs.drop_prob * DROP_SCALE)
        if threshold > 0:
            gen = {"numgen": {"mode": "random", "mod": DROP_SCALE, "offset": 0}}
            out.append(
                RuleSpec(EGRESS, f"d{i}", _stmts(mark, _match(gen, threshold, "<"), {"counter": None}, {"drop": None}))
            )
        classid = target.classid(i)
        prio = _mangle({"meta": {"key": "priority"}}, f"{classid >> 16:x}:{classid & 0xFFFF:x}")
        out.append(RuleSpec(EGRESS, f"p{i}", _stmts(mark, prio, {"counter": None})))
    return out


def desired_rules(spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget) -> dict[str, list[RuleSpec]]:
    """Every rule of the tenant's table, by chain, in order."""
    marks = tuple((cs.dscp, round(cs.drop_prob * DROP_SCALE)) for cs in plan.classes)
    return _cached_rules(spec, target, marks)


# Rules depend only on each class's DSCP and drop threshold, which change far less often than rates;
# building them (JSON, hashing) is most of a plan's Python cost, so identical inputs reuse the result.
@lru_cache(maxsize=256)
def _cached_rules(
    spec: TenantSpec, target: EnforceTarget, marks: tuple[tuple[int, int], ...]
) -> dict[str, list[RuleSpec]]:
    plan = ShapingPlan(spec.name, tuple(ClassShaping(1.0, 1.0, 0, 0, d, t / DROP_SCALE, 0) for d, t in marks), 1.0)
    jump = _stmts({"jump": {"target": CLASSIFY}})
    return {
        CLASSIFY: classify_rules(spec, plan, target),
        "pre": [RuleSpec("pre", "jump", jump)],
        "out": [RuleSpec("out", "jump", jump)],
        EGRESS: egress_rules(plan, target),
    }
