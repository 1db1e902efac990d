"""Where a tenant's plan is enforced: namespace, shaped interfaces, paths with their routing tables, marks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shaping.spec.tenant import SpecError, TenantSpec

#: dev_valid_name() (net/core/dev.c): 1..15 bytes (IFNAMSIZ 16 with the NUL), no '/', ':' or whitespace.
_IFNAME = re.compile(r"^[^/:\s]{1,15}$")
#: Routing tables the kernel reserves: unspec, default, main, local.
_RESERVED_TABLES = (0, 253, 254, 255)
_NFT_NAME = re.compile(r"[^A-Za-z0-9_]")
#: The loopback device's name in every network namespace (net/core/dev.c, loopback_net_init); one
#: renamed is caught by its IFF_LOOPBACK flag when the netlink backend opens (backends.check_not_loopback).
LOOPBACK = "lo"
#: Priorities HTB serves (TC_HTB_NUMPRIO in include/uapi/linux/pkt_sched.h).
HTB_PRIORITIES = 8


@dataclass(frozen=True)
class PathRoute:
    """One provider path: the interface it leaves by, and how classes are steered onto it.

    A path with ``table=None`` uses the main routing table: classes on it get no policy rule.
    """

    name: str
    """The scenario's path name."""
    interface: str
    """Egress interface of the path."""
    table: int | None = None
    """Routing table holding the path's default route; None: no policy routing for this path."""
    gateway: str | None = None
    """Next hop of the path's default route; None: the route is on-link through the interface."""


@dataclass(frozen=True)
class EnforceConfig:
    """Deployment knobs of the kernel backend that the tenant spec does not carry."""

    interfaces: tuple[str, ...] = ()
    """Interface of each scenario path, in path order; empty: the path names are the interfaces."""
    gateways: tuple[str | None, ...] = ()
    """Next hop of each path (empty or None entries: on-link)."""
    netns: str | None = None
    """Network namespace (name under /run/netns) to act in; None: the caller's namespace."""
    table_base: int | None = 100
    """Routing table of path i is table_base + i; None: no policy routing (single-path deployments)."""
    fwmark_base: int = 0x4600
    """Mark of class i is fwmark_base + i + 1; the low byte must be free (at most 255 classes)."""
    rule_priority_base: int = 20000
    """Policy rule of class i has priority rule_priority_base + i."""
    handle_major: int = 1
    """Major handle of the tenant's HTB qdisc on every shaped interface."""
    default_rate_mbps: float = 1.0
    """Guaranteed rate of the default class (unclassified traffic: ARP, other tenants' leftovers)."""


@dataclass(frozen=True)
class EnforceTarget:
    """Everything the kernel backend may touch for one tenant; nothing outside it is ever changed."""

    tenant: str
    netns: str | None
    paths: tuple[PathRoute, ...]
    fwmark_base: int = 0x4600
    rule_priority_base: int = 20000
    handle_major: int = 1
    default_rate_mbps: float = 1.0
    nft_table: str = field(default="")
    """nftables table (family inet) of the tenant; empty: ``fedshape_<tenant>``."""

    def __post_init__(self) -> None:
        if not self.paths:
            raise SpecError(f"tenant {self.tenant!r}: the enforcement target needs at least one path")
        for p in self.paths:
            if not _IFNAME.match(p.interface) or p.interface in (".", ".."):
                raise SpecError(f"path {p.name!r}: {p.interface!r} is not a valid interface name")
            if p.interface == LOOPBACK:
                raise SpecError(f"path {p.name!r}: {p.interface!r} is the loopback interface, not a provider path "
                                "(shaping it would shape the host's own local traffic)")  # fmt: skip
            if p.table is not None and (p.table in _RESERVED_TABLES or not 0 < p.table < 2**32):
                raise SpecError(f"path {p.name!r}: routing table {p.table} is reserved or out of range")
        if self.fwmark_base & 0xFF:
            raise SpecError(f"fwmark_base {self.fwmark_base:#x} must have a zero low byte (class index goes there)")
        if not 1 <= self.handle_major <= 0x7FFF:
            raise SpecError(f"handle_major {self.handle_major} outside 1..0x7fff")
        if not self.nft_table:
            object.__setattr__(self, "nft_table", "fedshape_" + _NFT_NAME.sub("_", self.tenant))

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The shaped interfaces (one HTB tree each), distinct, in path order."""
        return tuple(dict.fromkeys(p.interface for p in self.paths))

    @property
    def tables(self) -> tuple[int, ...]:
        """The routing tables this target owns."""
        return tuple(dict.fromkeys(p.table for p in self.paths if p.table is not None))

    def mark(self, class_index: int) -> int:
        """fwmark of a class (also what the egress chain keys priority and drops on)."""
        return self.fwmark_base + class_index + 1

    def classid(self, class_index: int) -> int:
        """HTB class id (major:minor packed) of a traffic class: minor 0x10 + index."""
        return (self.handle_major << 16) | (0x10 + class_index)

    @property
    def root_classid(self) -> int:
        """The tenant's aggregate class (major:1)."""
        return (self.handle_major << 16) | 1

    @property
    def default_classid(self) -> int:
        """The class of unclassified traffic (major:2)."""
        return (self.handle_major << 16) | 2

    @property
    def qdisc_handle(self) -> int:
        """Handle of the HTB root qdisc (major:0)."""
        return self.handle_major << 16

    def check_interface(self, name: str) -> None:
        """Raise PermissionError unless the interface is one the target names."""
        if name not in self.interfaces:
            raise PermissionError(f"interface {name!r} is not named in the enforcement target {self.interfaces}")


def target_from_spec(spec: TenantSpec, cfg: EnforceConfig | None = None) -> EnforceTarget:
    """Build the enforcement target of a tenant from its spec and the deployment config.

    Raises:
        SpecError: when the config's interfaces do not match the spec's paths, or the spec has more
            classes or priority levels than the kernel objects can carry.
    """
    cfg = cfg or EnforceConfig()
    names = cfg.interfaces or spec.paths
    if len(names) != len(spec.paths):
        raise SpecError(
            f"tenant {spec.name!r}: {len(spec.paths)} paths {list(spec.paths)}, "
            f"but {len(names)} interfaces {list(names)}"
        )
    if len(spec.classes) > 255:
        raise SpecError(f"tenant {spec.name!r}: at most 255 classes can be marked, got {len(spec.classes)}")
    if spec.priority_levels > HTB_PRIORITIES:
        # The guard keeps plans within the spec's levels; beyond HTB's, every plan using them would be refused.
        raise SpecError(f"tenant {spec.name!r}: priority_levels {spec.priority_levels} above the "
                        f"{HTB_PRIORITIES} HTB serves")  # fmt: skip
    gws = list(cfg.gateways) + [None] * (len(names) - len(cfg.gateways))
    paths = tuple(
        PathRoute(
            name=pname,
            interface=iface,
            table=None if cfg.table_base is None or len(names) == 1 else cfg.table_base + i,
            gateway=gws[i],
        )
        for i, (pname, iface) in enumerate(zip(spec.paths, names, strict=True))
    )
    return EnforceTarget(
        tenant=spec.name,
        netns=cfg.netns,
        paths=paths,
        fwmark_base=cfg.fwmark_base,
        rule_priority_base=cfg.rule_priority_base,
        handle_major=cfg.handle_major,
        default_rate_mbps=cfg.default_rate_mbps,
    )
