"""Validated, index-friendly view of a tenant: its entities, traffic classes and QoS requirements."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from shaping.config import APPS, ENTITY_KINDS, ClassConfig, QoSConfig, ScenarioConfig, TenantConfig


class SpecError(ValueError):
    """A tenant or scenario configuration that cannot be turned into a spec."""


@dataclass(frozen=True)
class Entity:
    """A VM, subnet or security group, matched by addresses."""

    name: str
    kind: str
    cidrs: tuple[str, ...]
    vcpus: int
    memory_gib: float


@dataclass(frozen=True)
class QoSRequirement:
    """QoS requirement (SLA) of one class; None means not required."""

    max_p99_ms: float | None = None
    min_mbps: float | None = None
    max_loss: float | None = None
    app_floor: float | None = None

    @property
    def any(self) -> bool:
        """Whether the class has any requirement at all."""
        return any(v is not None for v in (self.max_p99_ms, self.min_mbps, self.max_loss, self.app_floor))

    @classmethod
    def from_config(cls, cfg: QoSConfig) -> QoSRequirement:
        """Build from a config block."""
        return cls(cfg.max_p99_ms, cfg.min_mbps, cfg.max_loss, cfg.app_floor)


@dataclass(frozen=True)
class TrafficClass:
    """One application's traffic of an entity."""

    name: str
    app: str
    entity: str
    mbps: float
    flows: int
    protocol: str
    ports: tuple[int, ...]
    match_dscp: int | None
    qos: QoSRequirement
    dst_cidrs: tuple[str, ...] = ()
    """Remote addresses the class's packets go to (empty: any); classification only, not in the layouts."""


@dataclass(frozen=True)
class TenantSpec:
    """Everything the observation, action and reward layouts need to know about one tenant."""

    name: str
    cap_mbps: float
    entities: tuple[Entity, ...]
    classes: tuple[TrafficClass, ...]
    paths: tuple[str, ...]
    dscp_set: tuple[int, ...]
    rate_levels: tuple[float, ...]
    ceil_levels: tuple[float, ...]
    root_levels: tuple[float, ...]
    drop_levels: tuple[float, ...]
    priority_levels: int
    bottleneck_share_mbps: float
    """The tenant's cap-weighted share of the first path: what an operator sets a shaper to."""
    path_mbps: tuple[float, ...] = ()
    """Capacity of each path (Mbit/s), as the provider publishes it; () when unknown."""
    path_delay_ms: tuple[float, ...] = ()
    """Base one-way delay of each path (ms), as the provider publishes it; () when unknown."""

    @property
    def vms(self) -> tuple[Entity, ...]:
        """The entities that are VMs (they have CPU and memory)."""
        return tuple(e for e in self.entities if e.kind == "vm")

    def entity_index(self, name: str) -> int:
        """Position of an entity by name."""
        for i, e in enumerate(self.entities):
            if e.name == name:
                return i
        raise SpecError(f"tenant {self.name!r}: unknown entity {name!r}")

    def fingerprint(self) -> str:
        """A short string that changes whenever the observation or action layout changes."""
        parts = [
            f"E={[(e.name, e.kind) for e in self.entities]}",
            f"C={[(c.name, c.app, c.entity) for c in self.classes]}",
            f"P={len(self.paths)}",
            f"D={list(self.dscp_set)}",
            f"R={list(self.rate_levels)}",
            f"L={list(self.ceil_levels)}",
            f"T={list(self.root_levels)}",
            f"X={list(self.drop_levels)}",
            f"Q={self.priority_levels}",
        ]
        return ";".join(parts)


def _check_tenant(cfg: TenantConfig) -> None:
    where = f"tenant {cfg.name!r}"
    if cfg.cap_mbps <= 0:
        raise SpecError(f"{where}: cap_mbps must be > 0, got {cfg.cap_mbps}")
    if not cfg.entities:
        raise SpecError(f"{where}: needs at least one entity")
    if not cfg.classes:
        raise SpecError(f"{where}: needs at least one traffic class")
    names = [e.name for e in cfg.entities]
    if len(set(names)) != len(names):
        raise SpecError(f"{where}: duplicate entity names {names}")
    for e in cfg.entities:
        if e.kind not in ENTITY_KINDS:
            raise SpecError(f"{where}: entity {e.name!r} has kind {e.kind!r}, expected one of {ENTITY_KINDS}")
        _check_cidrs(f"{where}: entity {e.name!r}", e.cidrs)
    cnames = [c.name for c in cfg.classes]
    if len(set(cnames)) != len(cnames):
        raise SpecError(f"{where}: duplicate class names {cnames}")
    for c in cfg.classes:
        _check_class(where, c, names)


def _check_cidrs(where: str, cidrs: list[str]) -> None:
    # The kernel backend matches on these addresses; a malformed one must fail here, not in netlink.
    if not cidrs:
        raise SpecError(f"{where} needs at least one address (cidrs)")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as err:
            raise SpecError(f"{where} has an invalid address {cidr!r}: {err}") from None


def _check_class(where: str, c: ClassConfig, entities: list[str]) -> None:
    if c.app not in APPS:
        raise SpecError(f"{where}: class {c.name!r} has app {c.app!r}, expected one of {APPS}")
    if c.entity not in entities:
        raise SpecError(f"{where}: class {c.name!r} names unknown entity {c.entity!r} (have {entities})")
    if c.mbps <= 0 or c.flows < 1:
        raise SpecError(f"{where}: class {c.name!r} needs mbps > 0 and flows >= 1")
    if c.protocol not in ("tcp", "udp"):
        raise SpecError(f"{where}: class {c.name!r} protocol must be tcp or udp, got {c.protocol!r}")
    if c.match_dscp is not None and not 0 <= c.match_dscp <= 63:
        raise SpecError(f"{where}: class {c.name!r} match_dscp must be in 0..63")
    if any(not 1 <= port <= 65535 for port in c.ports):
        raise SpecError(f"{where}: class {c.name!r} ports must be in 1..65535, got {list(c.ports)}")
    if c.dst_cidrs:
        _check_cidrs(f"{where}: class {c.name!r} dst_cidrs", c.dst_cidrs)
    q = c.qos
    # A non-positive latency bound or a negative minimum rate is always (or never) met: a typo, not an SLA.
    if q.max_p99_ms is not None and q.max_p99_ms <= 0:
        raise SpecError(f"{where}: class {c.name!r} max_p99_ms must be > 0, got {q.max_p99_ms}")
    if q.min_mbps is not None and q.min_mbps < 0:
        raise SpecError(f"{where}: class {c.name!r} min_mbps must be >= 0, got {q.min_mbps}")
    if q.max_loss is not None and not 0.0 <= q.max_loss <= 1.0:
        raise SpecError(f"{where}: class {c.name!r} max_loss must be in [0, 1]")
    if q.app_floor is not None and not 0.0 <= q.app_floor <= 1.0:
        raise SpecError(f"{where}: class {c.name!r} app_floor must be in [0, 1]")


def tenant_spec(scenario: ScenarioConfig, tenant: int | str) -> TenantSpec:
    """Validate one tenant of a scenario and return its spec.

    Args:
        scenario: the scenario holding the tenant, paths and action levels.
        tenant: index or name of the tenant.
    Raises:
        SpecError: with a message naming the offending field.
    """
    cfgs = scenario.tenants
    if isinstance(tenant, str):
        matches = [t for t in cfgs if t.name == tenant]
        if not matches:
            raise SpecError(f"unknown tenant {tenant!r}; scenario has {[t.name for t in cfgs]}")
        cfg = matches[0]
    else:
        if not 0 <= tenant < len(cfgs):
            raise SpecError(f"tenant index {tenant} out of range (scenario has {len(cfgs)})")
        cfg = cfgs[tenant]
    _check_tenant(cfg)
    if not scenario.paths:
        raise SpecError("scenario needs at least one path")
    for d in scenario.dscp_set:
        if not 0 <= d <= 63:
            raise SpecError(f"dscp_set value {d} is outside 0..63")
    if any(not 0 < r <= 1 for r in [*scenario.rate_levels, *scenario.ceil_levels, *scenario.root_levels]):
        raise SpecError("rate_levels, ceil_levels and root_levels must be fractions in (0, 1]")
    if any(not 0 <= p <= 1 for p in scenario.drop_levels):
        raise SpecError("drop_levels must be probabilities in [0, 1]")
    # An empty choice list would give the MultiDiscrete action space a dimension of size 0.
    levels = {
        "dscp_set": scenario.dscp_set,
        "rate_levels": scenario.rate_levels,
        "ceil_levels": scenario.ceil_levels,
        "root_levels": scenario.root_levels,
        "drop_levels": scenario.drop_levels,
    }
    empty = [name for name, values in levels.items() if not values]
    if empty or scenario.priority_levels < 1:
        raise SpecError(
            f"every action choice needs at least one level: empty {empty}, priority_levels {scenario.priority_levels}"
        )
    return TenantSpec(
        name=cfg.name,
        cap_mbps=float(cfg.cap_mbps),
        entities=tuple(
            Entity(e.name, e.kind, tuple(e.cidrs), int(e.vcpus), float(e.memory_gib)) for e in cfg.entities
        ),
        classes=tuple(
            TrafficClass(
                name=c.name,
                app=c.app,
                entity=c.entity,
                mbps=float(c.mbps),
                flows=int(c.flows),
                protocol=c.protocol,
                ports=tuple(c.ports),
                match_dscp=c.match_dscp,
                qos=QoSRequirement.from_config(c.qos),
                dst_cidrs=tuple(str(ipaddress.ip_network(d, strict=False)) for d in c.dst_cidrs),
            )
            for c in cfg.classes
        ),
        paths=tuple(p.name for p in scenario.paths),
        dscp_set=tuple(int(d) for d in scenario.dscp_set),
        rate_levels=tuple(float(x) for x in scenario.rate_levels),
        ceil_levels=tuple(float(x) for x in scenario.ceil_levels),
        root_levels=tuple(float(x) for x in scenario.root_levels),
        drop_levels=tuple(float(x) for x in scenario.drop_levels),
        priority_levels=int(scenario.priority_levels),
        bottleneck_share_mbps=min(
            float(cfg.cap_mbps),
            scenario.paths[0].capacity_mbps * cfg.cap_mbps / sum(t.cap_mbps for t in cfgs),
        ),
        path_mbps=tuple(float(p.capacity_mbps) for p in scenario.paths),
        path_delay_ms=tuple(float(p.base_delay_ms) for p in scenario.paths),
    )


def scenario_specs(scenario: ScenarioConfig) -> list[TenantSpec]:
    """Specs of every tenant of a scenario, validated."""
    if not scenario.tenants:
        raise SpecError(f"scenario {scenario.name!r} has no tenants")
    names = [t.name for t in scenario.tenants]
    if len(set(names)) != len(names):
        raise SpecError(f"duplicate tenant names {names}")
    return [tenant_spec(scenario, i) for i in range(len(scenario.tenants))]


def controlled_indices(scenario: ScenarioConfig) -> list[int]:
    """Indices of the tenants a policy under test controls: `scenario.controlled` by name (in scenario
    order), every tenant when it is empty.

    Raises:
        SpecError: a name that is not a tenant of the scenario.
    """
    names = [t.name for t in scenario.tenants]
    unknown = [n for n in scenario.controlled if n not in names]
    if unknown:
        raise SpecError(f"controlled names unknown tenants {unknown}; scenario {scenario.name!r} has {names}")
    if not scenario.controlled:
        return list(range(len(names)))
    return [i for i, n in enumerate(names) if n in scenario.controlled]
