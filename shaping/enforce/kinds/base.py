"""What every operation kind provides: planning against kernel state, recording, netlink application, reading."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shaping.enforce.ops import KernelState, Operation
from shaping.enforce.target import EnforceTarget
from shaping.spec.plan import ShapingPlan
from shaping.spec.tenant import TenantSpec

#: Runs one nftables JSON document (``{"nftables": [...]}``) and returns the decoded JSON output.
NftRunner = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class NetlinkContext:
    """The OS surfaces a kind touches: a pyroute2 IPRoute bound to the target's namespace and an nft runner."""

    ipr: Any
    """pyroute2.IPRoute (sync API) in the target's network namespace."""
    nft: NftRunner
    target: EnforceTarget
    nft_rule_handles: list[int] = field(default_factory=list)
    """Handles the kernel gave the rules added (add, insert) by the last nft transaction, in command order;
    empty when the runner echoed nothing."""

    def ifindex(self, name: str) -> int:
        """Index of a target interface; refuses interfaces the target does not name."""
        self.target.check_interface(name)
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise LookupError(f"interface {name!r} does not exist in netns {self.target.netns or '(current)'}")
        return int(found[0])


class Kind(Protocol):
    """One qdisc or rule kind, registered in kinds.KINDS."""

    name: str

    def plan(self, spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Operations that bring this kind's part of ``current`` to what ``plan`` needs (pure)."""
        ...

    def teardown(self, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Operations that remove everything of this kind in ``current`` (pure)."""
        ...

    def record(self, state: KernelState, op: Operation) -> None:
        """Apply one operation to an in-memory state (recording backend)."""
        ...

    def apply(self, ctx: NetlinkContext, ops: Sequence[Operation]) -> None:
        """Apply this kind's operations to the kernel, in order."""
        ...

    def read(self, ctx: NetlinkContext, state: KernelState) -> None:
        """Fill this kind's part of ``state`` from the kernel."""
        ...
