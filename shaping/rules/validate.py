"""Validation of a tenant's rules with messages that name the offending field.

The spec (shaping.spec) already checks entities, classes, QoS and plans; this module adds what only
rules have (names, bounds, modes, paths by name, destination matches, overlapping matches, the sum
of guaranteed rates) and runs the spec's own checks through `compile_rules` for the rest.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import NamedTuple

from shaping.config import PathConfig
from shaping.names import NAME_RULE, is_valid_name
from shaping.rules.model import MODES, ClassRule, EntityRule, Limits, RuleSet
from shaping.spec.tenant import SpecError



class RulesError(SpecError):
    """Rules that cannot be accepted; the message names the field and the allowed values."""


def _shown(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for an error message: a refusal stays one short line however long
    the input that caused it."""
    return text if len(text) <= limit else text[:limit] + "..."


def check_name(what: str, name: str, limits: Limits) -> None:
    """Raise RulesError unless `name` is a short lower-case identifier (shaping.names)."""
    if not is_valid_name(name, limits.max_name_len):
        raise RulesError(f"{what} {_shown(name)!r} is not a valid name: 1..{limits.max_name_len} {NAME_RULE}")


def _finite(where: str, value: float) -> None:
    if not math.isfinite(value):
        raise RulesError(f"{where} must be a finite number, got {value}")


#: The smallest positive rate a class may be given, Mbit/s (1 kbit/s): HTB keeps rates in bytes per second,
#: and anything below a few hundred bytes per second is rounded to a rate the kernel cannot shape to.
MIN_RATE_MBPS = 0.001
#: The smallest latency requirement that means something, ms (one microsecond, below any scheduler tick).
MIN_P99_MS = 0.001


def _network(cidr: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as err:
        raise RulesError(f"{where} has an invalid address {_shown(cidr)!r}: {_shown(str(err), 120)}") from None


def _ranges(cidrs: Sequence[str], where: str) -> list[tuple[int, int, int]]:
    """(ip version, first, last) of each network, sorted; RulesError on a malformed one."""
    out = []
    for cidr in cidrs:
        net = _network(cidr, where)
        out.append((net.version, int(net.network_address), int(net.broadcast_address)))
    return sorted(out)


def _routable(cidrs: Sequence[str], where: str, *, source: bool) -> None:
    """RulesError for addresses the kernel cannot match as written or that are nobody's to claim.

    A scope (`fe80::1%eth0`) is dropped by tc and nftables matches, so the rule would match other links'
    addresses; a prefix of length 0 is every address. Sources (an entity's own addresses) must also be
    unicast addresses a tenant can own: not link-local, loopback, multicast or unspecified.
    """
    for cidr in cidrs:
        net = _network(cidr, where)
        if "%" in cidr:
            raise RulesError(f"{where}: address {_shown(cidr)!r} has a scope (%...); give the address without it")
        if net.prefixlen == 0:
            hint = "list the tenant's own networks" if source else "leave match.dst_cidrs empty to match any"
            raise RulesError(f"{where}: address {_shown(cidr)!r} is every address (prefix length 0); {hint}")
        kinds = (("link-local", net.is_link_local), ("loopback", net.is_loopback),
                 ("multicast", net.is_multicast), ("unspecified", net.is_unspecified))
        bad = [name for name, hit in kinds if hit] if source else []
        if bad:
            raise RulesError(f"{where}: address {_shown(cidr)!r} is {bad[0]}, not an address a tenant can own")


def _normalized_cidrs(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    """Each address as its network (`10.0.0.1/24` -> `10.0.0.0/24`); malformed ones as given, for validation."""
    out = []
    for cidr in cidrs:
        try:
            out.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            out.append(cidr)
    return tuple(out)


def normalized(rules: RuleSet) -> RuleSet:
    """The rules with every address written as its network, so that what is stored is what is matched."""
    entities = tuple(replace(e, cidrs=_normalized_cidrs(e.cidrs)) for e in rules.entities)
    classes = tuple(replace(c, match=replace(c.match, dst_cidrs=_normalized_cidrs(c.match.dst_cidrs)))
                    for c in rules.classes)
    return replace(rules, entities=entities, classes=classes, address_space=_normalized_cidrs(rules.address_space))


def check_address_space(rules: RuleSet, limits: Limits) -> None:
    """RulesError unless the address space is well formed and every entity address lies inside it."""
    if not rules.address_space:
        return
    if len(rules.address_space) > limits.max_cidrs:
        raise RulesError(f"address_space: at most {limits.max_cidrs} networks, got {len(rules.address_space)}")
    _routable(rules.address_space, "address_space", source=True)
    spaces = [_network(n, "address_space") for n in rules.address_space]
    for e in rules.entities:
        for cidr in e.cidrs:
            net = _network(cidr, f"entity {e.name!r}")
            if not any(net.version == sp.version and net.subnet_of(sp) for sp in spaces):  # type: ignore[arg-type]
                raise RulesError(f"entity {e.name!r}: address {_shown(cidr)!r} is outside the tenant's address space"
                                 f" {list(rules.address_space)} (set by the provider)")


def _overlap(a: list[tuple[int, int, int]], b: list[tuple[int, int, int]]) -> bool:
    """Whether two sorted range lists share an address (a merge, linear in their lengths)."""
    i = j = 0
    while i < len(a) and j < len(b):
        (va, fa, la), (vb, fb, lb) = a[i], b[j]
        if va == vb and fa <= lb and fb <= la:
            return True
        if (va, la) < (vb, lb):
            i += 1
        else:
            j += 1
    return False


def _short_strings(where: str, limits: Limits, **values: str | tuple[str, ...]) -> None:
    """Bound every free-text field before any message quotes it."""
    for label, value in values.items():
        for v in (value,) if isinstance(value, str) else value:
            if len(v) > limits.max_name_len:
                raise RulesError(f"{where}: {label} {v[:40]!r}... is longer than {limits.max_name_len} characters")


def check_entity(e: EntityRule, limits: Limits) -> None:
    """Checks of one entity that the spec does not make (name, mode, bounds)."""
    check_name("entity", e.name, limits)
    where = f"entity {e.name!r}"
    _short_strings(where, limits, kind=e.kind, mode=e.mode, cidrs=e.cidrs)
    if e.mode not in MODES:
        raise RulesError(f"{where}: mode {e.mode!r} is not one of {MODES}")
    if not 1 <= len(e.cidrs) <= limits.max_cidrs:
        raise RulesError(f"{where}: needs 1..{limits.max_cidrs} addresses (cidrs), got {len(e.cidrs)}")
    if not 1 <= e.vcpus <= 1024:
        raise RulesError(f"{where}: vcpus must be in 1..1024, got {e.vcpus}")
    _finite(f"{where}: memory_gib", e.memory_gib)
    if not 0 < e.memory_gib <= 65536:
        raise RulesError(f"{where}: memory_gib must be in (0, 65536], got {e.memory_gib}")
    _routable(e.cidrs, where, source=True)


def check_class(c: ClassRule, limits: Limits, paths: Sequence[PathConfig]) -> None:
    """Checks of one class that the spec does not make (name, bounds, action fields, path by name)."""
    check_name("class", c.name, limits)
    where = f"class {c.name!r}"
    _short_strings(where, limits, entity=c.entity, app=c.app, protocol=c.match.protocol, path=c.action.path,
                   dst_cidrs=c.match.dst_cidrs)
    a = c.action
    for label, value in (("mbps", c.mbps), ("action.rate_mbps", a.rate_mbps), ("action.ceil_mbps", a.ceil_mbps),
                         ("action.drop_prob", a.drop_prob)):
        _finite(f"{where}: {label}", value)
    for label, q in (("qos.max_p99_ms", c.qos.max_p99_ms), ("qos.min_mbps", c.qos.min_mbps),
                     ("qos.max_loss", c.qos.max_loss), ("qos.app_floor", c.qos.app_floor)):
        if q is not None:
            _finite(f"{where}: {label}", q)
    if len(c.match.ports) > limits.max_ports or len(c.match.dst_cidrs) > limits.max_cidrs:
        raise RulesError(f"{where}: at most {limits.max_ports} ports and {limits.max_cidrs} destination addresses")
    if len(set(c.match.ports)) != len(c.match.ports):
        raise RulesError(f"{where}: duplicate ports {sorted(c.match.ports)}")
    if not 1 <= c.flows <= limits.max_flows:
        raise RulesError(f"{where}: flows must be in 1..{limits.max_flows}, got {c.flows}")
    if not 0 <= a.priority <= limits.max_priority:
        raise RulesError(f"{where}: action.priority must be in 0..{limits.max_priority}, got {a.priority}")
    if not 0 <= a.burst_bytes <= 64 * 2**20:
        raise RulesError(f"{where}: action.burst_bytes must be in 0..{64 * 2**20} (0: derived), got {a.burst_bytes}")
    names = [p.name for p in paths]
    if a.path and a.path not in names:
        raise RulesError(f"{where}: action.path {_shown(a.path)!r} is not a provider path; paths are {names}")
    _routable(c.match.dst_cidrs, f"{where}: match.dst_cidrs", source=False)
    for label, value in (("action.rate_mbps", a.rate_mbps), ("action.ceil_mbps", a.ceil_mbps), ("mbps", c.mbps)):
        if value < MIN_RATE_MBPS:
            raise RulesError(f"{where}: {label} must be at least {MIN_RATE_MBPS} Mbit/s (1 kbit/s), got {value:g}")
    if c.qos.max_p99_ms is not None and 0 < c.qos.max_p99_ms < MIN_P99_MS:  # <= 0: the spec says so
        raise RulesError(f"{where}: qos.max_p99_ms must be at least {MIN_P99_MS} ms, got {c.qos.max_p99_ms:g}")


class _MatchKey(NamedTuple):
    protocol: str
    ports: frozenset[int]
    dscp: int | None
    src: list[tuple[int, int, int]]
    dst: list[tuple[int, int, int]]


def _can_share_packet(a: _MatchKey, b: _MatchKey) -> bool:
    """Whether some packet matches both keys (empty ports or destinations match anything)."""
    if a.protocol != b.protocol or (a.dscp is not None and b.dscp is not None and a.dscp != b.dscp):
        return False
    if a.ports and b.ports and not a.ports & b.ports:
        return False
    if not _overlap(a.src, b.src):
        return False
    return not (a.dst and b.dst and not _overlap(a.dst, b.dst))


def check_overlaps(rules: RuleSet) -> None:
    """Raise RulesError when two classes of the tenant could match the same packet."""
    src = {e.name: _ranges(e.cidrs, e.name) for e in rules.entities}
    keys = [
        _MatchKey(c.match.protocol, frozenset(c.match.ports), c.match.dscp, src.get(c.entity, []),
                  _ranges(c.match.dst_cidrs, c.name))
        for c in rules.classes
    ]
    for i, a in enumerate(rules.classes):
        for j in range(i + 1, len(rules.classes)):
            if _can_share_packet(keys[i], keys[j]):
                b = rules.classes[j]
                raise RulesError(
                    f"classes {a.name!r} and {b.name!r} overlap: both match {a.match.protocol} packets from"
                    f" overlapping addresses of entities {a.entity!r}/{b.entity!r} with shared ports, destinations"
                    " and DSCP; make their match.ports, match.dst_cidrs or match.dscp disjoint"
                )


def check_structure(rules: RuleSet, limits: Limits, paths: Sequence[PathConfig]) -> None:
    """Every check that needs no spec: names, bounds, per-entity and per-class fields, overlaps, rates."""
    check_name("tenant", rules.tenant, limits)
    _finite("cap_mbps", rules.cap_mbps)
    capacity = max((p.capacity_mbps for p in paths), default=0.0)
    if not 0 < rules.cap_mbps <= capacity:
        raise RulesError(f"cap_mbps {rules.cap_mbps} must be in (0, {capacity}] (the largest provider link)")
    if len(rules.entities) > limits.max_entities or len(rules.classes) > limits.max_classes:
        raise RulesError(f"at most {limits.max_entities} entities and {limits.max_classes} classes per tenant, got"
                         f" {len(rules.entities)} and {len(rules.classes)}")
    for e in rules.entities:
        check_entity(e, limits)
    for c in rules.classes:
        check_class(c, limits, paths)
    check_address_space(rules, limits)
    for c in rules.classes:
        if c.qos.min_mbps is not None and c.qos.min_mbps > rules.cap_mbps:
            raise RulesError(f"class {c.name!r}: qos.min_mbps {c.qos.min_mbps:g} is above the tenant's cap"
                             f" {rules.cap_mbps:g} Mbit/s, so it can never be met")
    by_path: dict[str, float] = {}
    for c in rules.classes:
        path = c.action.path or paths[0].name
        by_path[path] = by_path.get(path, 0.0) + c.action.rate_mbps
    total = sum(c.action.rate_mbps for c in rules.classes)
    if total > rules.cap_mbps * (1 + 1e-9):
        raise RulesError(f"guaranteed rates (action.rate_mbps) sum to {total:g} Mbit/s, above the tenant's cap"
                         f" {rules.cap_mbps:g}")
    for p in paths:
        if by_path.get(p.name, 0.0) > p.capacity_mbps * (1 + 1e-9):
            raise RulesError(f"guaranteed rates on path {p.name!r} sum to {by_path[p.name]:g} Mbit/s, above its"
                             f" capacity {p.capacity_mbps:g}")


def _union(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Sorted ranges merged where they touch or overlap, so that they are disjoint and ordered."""
    out: list[tuple[int, int, int]] = []
    for v, first, last in sorted(ranges):
        if out and out[-1][0] == v and first <= out[-1][2] + 1:
            out[-1] = (v, out[-1][1], max(out[-1][2], last))
        else:
            out.append((v, first, last))
    return out


def check_disjoint_tenants(rules: RuleSet, others: Iterable[RuleSet]) -> None:
    """RulesError when an entity or the address space of `rules` touches another tenant's entity or address space.

    The message names neither the other tenant nor its entity: a tenant learns only that the range is taken.
    Each address is looked up by bisection in the union of the others' ranges (64 entities of 32 addresses
    against thousands of tenants stays in milliseconds).
    """
    theirs = _union([r for other in others if other.tenant != rules.tenant
                     for cidrs in (other.address_space, *(e.cidrs for e in other.entities))
                     for r in _ranges(cidrs, other.tenant)])
    if not theirs:
        return
    mine = [("address_space", rules.address_space), *((f"entity {e.name!r}", e.cidrs) for e in rules.entities)]
    for what, cidrs in mine:
        for cidr in cidrs:
            (v, first, last), = _ranges((cidr,), what)
            # The last of their ranges that starts at or before our last address is the only candidate.
            k = bisect.bisect_left(theirs, (v, last + 1, 0)) - 1
            if k >= 0 and theirs[k][0] == v and theirs[k][2] >= first:
                raise RulesError(f"{what}: address {_shown(cidr)!r} overlaps another tenant's addresses;"
                                 " ask the provider which ranges are yours")
