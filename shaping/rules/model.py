"""The rules a tenant writes: entities with a mode, traffic classes with a match, a static action and QoS."""

from __future__ import annotations

from dataclasses import dataclass, field

from shaping.spec.tenant import QoSRequirement

#: Mode of an entity: its classes follow the static actions, or the agent shapes them (Adaptive Shaping).
MODES: tuple[str, ...] = ("static", "adaptive")
#: Transport protocols a class can match (the kernel classifier and the spec know these two).
PROTOCOLS: tuple[str, ...] = ("tcp", "udp")


@dataclass(frozen=True)
class Match:
    """What packets belong to a class, on top of its entity's source addresses."""

    protocol: str = "tcp"
    ports: tuple[int, ...] = ()
    """Destination ports (empty: any)."""
    dst_cidrs: tuple[str, ...] = ()
    """Destination addresses (empty: any)."""
    dscp: int | None = None
    """DSCP of the packets as they arrive (None: any)."""


@dataclass(frozen=True)
class StaticAction:
    """The static shaping of a class: what the kernel enforces in static mode and as the agent's fallback."""

    rate_mbps: float = 1.0
    ceil_mbps: float = 1.0
    burst_bytes: int = 0
    """Token bucket depth; 0 derives it from the rate (shaping.spec.plan.burst_bytes)."""
    priority: int = 0
    dscp: int = 0
    drop_prob: float = 0.0
    path: str = ""
    """Provider path (interface) name; empty: the first path."""


@dataclass(frozen=True)
class ClassRule:
    """One application's traffic of an entity."""

    name: str
    entity: str
    app: str = "web"
    match: Match = field(default_factory=Match)
    action: StaticAction = field(default_factory=StaticAction)
    qos: QoSRequirement = field(default_factory=QoSRequirement)
    mbps: float = 10.0
    """Expected peak load, Mbit/s (the agent's observation scales by it)."""
    flows: int = 1


@dataclass(frozen=True)
class EntityRule:
    """A VM, subnet or security group with its addresses and its shaping mode."""

    name: str
    kind: str = "vm"
    cidrs: tuple[str, ...] = ()
    mode: str = "static"
    vcpus: int = 2
    memory_gib: float = 4.0


@dataclass(frozen=True)
class RuleSet:
    """Every rule of one tenant; `revision` grows by one with each accepted write."""

    tenant: str
    cap_mbps: float
    """What the tenant pays for (set by the provider), Mbit/s."""
    entities: tuple[EntityRule, ...] = ()
    classes: tuple[ClassRule, ...] = ()
    revision: int = 0
    address_space: tuple[str, ...] = ()
    """Networks the provider gave the tenant: every entity address must lie inside one (empty: no bound,
    beyond not touching another tenant's addresses). Set by the provider, like the cap."""

    def entity(self, name: str) -> EntityRule | None:
        """The entity of that name, or None."""
        return next((e for e in self.entities if e.name == name), None)

    def klass(self, name: str) -> ClassRule | None:
        """The class of that name, or None."""
        return next((c for c in self.classes if c.name == name), None)


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one tenant's rules small enough to validate, store and compile quickly."""

    max_entities: int = 64
    max_classes: int = 128
    max_cidrs: int = 32
    max_ports: int = 64
    max_name_len: int = 63
    max_flows: int = 100_000
    max_priority: int = 7
    """HTB has 8 priorities (0..7)."""
