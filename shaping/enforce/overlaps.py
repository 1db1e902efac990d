"""Classes that could match the same packet: refused before enforcement, since the first class would take it."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from shaping.spec.tenant import SpecError, TenantSpec, TrafficClass

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class _Match:
    """What a class's classifier rules match (empty ports or destinations: any)."""

    protocol: str
    ports: frozenset[int]
    dscp: int | None
    sources: tuple[_Net, ...]
    destinations: tuple[_Net, ...]


def _nets(cidrs: Sequence[str]) -> tuple[_Net, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _overlap(a: tuple[_Net, ...], b: tuple[_Net, ...]) -> bool:
    return any(x.version == y.version and x.overlaps(y) for x in a for y in b)


def _match(spec: TenantSpec, tc: TrafficClass) -> _Match:
    entity = spec.entities[spec.entity_index(tc.entity)]
    return _Match(tc.protocol, frozenset(tc.ports), tc.match_dscp, _nets(entity.cidrs), _nets(tc.dst_cidrs))


def _can_share_packet(a: _Match, b: _Match) -> bool:
    """Whether some packet matches both (the same port on both sides: the rules match either direction)."""
    if a.protocol != b.protocol or (a.dscp is not None and b.dscp is not None and a.dscp != b.dscp):
        return False
    if a.ports and b.ports and not a.ports & b.ports:
        return False
    if a.destinations and b.destinations and not _overlap(a.destinations, b.destinations):
        return False
    return _overlap(a.sources, b.sources)


def check_disjoint_classes(spec: TenantSpec) -> None:
    """Raise SpecError, naming both classes, when two classes of the tenant could match the same packet.

    The classifier is first-match in spec order (``nft_rules.classify_rules``): of two overlapping
    classes the later one silently loses the shared packets, and its shaping and SLA no longer
    describe its traffic. The rules service refuses such rules for the same reason.
    """
    matches = [_match(spec, tc) for tc in spec.classes]
    for i, a in enumerate(spec.classes):
        for j in range(i + 1, len(spec.classes)):
            if _can_share_packet(matches[i], matches[j]):
                b = spec.classes[j]
                raise SpecError(
                    f"tenant {spec.name!r}: classes {a.name!r} and {b.name!r} overlap (both match {a.protocol} "
                    f"packets from entities {a.entity!r}/{b.entity!r} with shared addresses, ports, destinations "
                    f"and DSCP), so {b.name!r} would lose them to {a.name!r}; make their addresses, ports, "
                    "dst_cidrs or match_dscp disjoint"
                )
