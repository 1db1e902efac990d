"""Typed enforcement operations: the base class, verbs and the kernel state they are planned against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

#: insert: a rule placed before another by handle (nftables); the other kinds use add, change, replace, delete.
Verb = Literal["add", "insert", "change", "replace", "delete"]


@dataclass(frozen=True)
class Operation:
    """One change to the kernel; ``kind`` names the module (registered in kinds.KINDS) that applies it."""

    kind: ClassVar[str] = ""
    verb: Verb

    def describe(self) -> str:
        """A one-line, human-readable form (dry runs, logs, golden files)."""
        fields_ = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "verb")
        return f"{self.kind}.{type(self).__name__}.{self.verb}({fields_})"


@dataclass(frozen=True)
class HtbQdiscState:
    """The tenant's HTB root qdisc on one interface."""

    handle: int
    default_minor: int


@dataclass(frozen=True)
class HtbClassState:
    """One HTB class as the kernel reports it (rates in bytes/s, buffers in psched ticks)."""

    parent: int
    rate: int
    ceil: int
    buffer: int
    cbuffer: int
    prio: int


@dataclass(frozen=True)
class NftRuleState:
    """One rule of the tenant's nftables table, identified by its comment (key and content signature)."""

    chain: str
    key: str
    sig: str
    handle: int


@dataclass(frozen=True)
class PolicyRuleState:
    """One fwmark policy-routing rule (IPv4)."""

    fwmark: int
    table: int


@dataclass(frozen=True)
class RouteState:
    """The default route of one path's routing table."""

    interface: str
    gateway: str | None


@dataclass
class KernelState:
    """What FedShape owns in the kernel, as read back (or as the recording backend models it).

    Only objects that belong to the target appear here: the HTB qdisc with the target's handle
    on the target's interfaces, the tenant's nftables table, rules in the target's priority
    range and routes in the target's tables.
    """

    qdiscs: dict[str, HtbQdiscState] = field(default_factory=dict)
    classes: dict[tuple[str, int], HtbClassState] = field(default_factory=dict)
    nft_table: bool = False
    nft_chains: set[str] = field(default_factory=set)
    nft_rules: list[NftRuleState] = field(default_factory=list)
    rules: dict[int, PolicyRuleState] = field(default_factory=dict)
    """Policy rules by priority."""
    routes: dict[int, RouteState] = field(default_factory=dict)
    """Default routes by table."""

    def empty(self) -> bool:
        """True when nothing of FedShape's is left."""
        return not (self.qdiscs or self.classes or self.nft_table or self.rules or self.routes)
