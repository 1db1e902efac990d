"""Backends apply operations: the recording one models the kernel in memory, the netlink one changes it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from itertools import groupby
from typing import Any, Protocol

from shaping.enforce.kinds import KINDS, NetlinkContext
from shaping.enforce.nftcli import NftCli
from shaping.enforce.ops import KernelState, Operation
from shaping.enforce.target import EnforceTarget
from shaping.spec.tenant import SpecError


class Backend(Protocol):
    """What the enforcer needs from a backend."""

    target: EnforceTarget

    def apply(self, ops: Sequence[Operation]) -> None:
        """Apply operations in order; raise on the first the kernel refuses."""
        ...

    def read_state(self) -> KernelState:
        """FedShape's objects as they are now."""
        ...

    def close(self) -> None:
        """Release handles."""
        ...


def _check_scope(target: EnforceTarget, ops: Sequence[Operation]) -> None:
    for op in ops:
        iface = getattr(op, "interface", None)
        if iface is not None:
            target.check_interface(iface)


#: IFF_LOOPBACK of include/uapi/linux/if.h.
IFF_LOOPBACK = 0x8


def check_not_loopback(ipr: Any, target: EnforceTarget) -> None:
    """Raise SpecError when a target interface that exists is a loopback device (by its flag, whatever its name).

    Args:
        ipr: a pyroute2 IPRoute in the target's namespace.
        target: the interfaces to check; one that does not exist yet is left to the first apply.
    """
    for name in target.interfaces:
        for idx in ipr.link_lookup(ifname=name):
            links = ipr.get_links(idx)
            if links and int(links[0]["flags"]) & IFF_LOOPBACK:
                raise SpecError(f"interface {name!r} is a loopback device, not a provider path")


class RecordingBackend:
    """Dry runs and golden tests: records every operation and keeps a model of the kernel state."""

    def __init__(self, target: EnforceTarget, state: KernelState | None = None) -> None:
        self.target = target
        self.state = state if state is not None else KernelState()
        self.log: list[Operation] = []

    def apply(self, ops: Sequence[Operation]) -> None:
        """Record and model the operations; refuses interfaces outside the target like the kernel backend."""
        _check_scope(self.target, ops)
        for op in ops:
            KINDS[op.kind].record(self.state, op)
            self.log.append(op)

    def read_state(self) -> KernelState:
        """A copy of the modelled state."""
        return copy.deepcopy(self.state)

    def close(self) -> None:
        """Nothing to release."""


class NetlinkBackend:
    """The kernel: pyroute2 netlink for HTB and routing, nft's JSON interface for the nftables table.

    Args:
        target: what may be touched (operations on other interfaces raise PermissionError; a loopback
            device among them raises SpecError here).
        ipr: a pyroute2 IPRoute in the target's namespace; None: open one (closed by ``close``).
        nft: an nft runner; None: ``NftCli(target.netns)``.
        kinds: the kinds read back (``Capabilities.kinds``: a missing feature is not read); None: all.
    """

    def __init__(
        self, target: EnforceTarget, ipr: Any = None, nft: Any = None, kinds: Sequence[str] | None = None
    ) -> None:
        self.target = target
        self.kinds = [k for k in KINDS if kinds is None or k in kinds]
        self._own_ipr = ipr is None
        if ipr is None:
            from pyroute2 import IPRoute

            # flags=0: never create the namespace as a side effect (pyroute2's default is O_CREAT).
            ipr = IPRoute(netns=target.netns, flags=0) if target.netns else IPRoute()
        try:
            check_not_loopback(ipr, target)
        except BaseException:
            if self._own_ipr:
                ipr.close()
            raise
        self.ipr = ipr
        self.ctx = NetlinkContext(ipr, nft or NftCli(target.netns), target)
        self.ops_applied = 0

    def apply(self, ops: Sequence[Operation]) -> None:
        """Apply runs of same-kind operations through their kind (nft runs become one transaction)."""
        _check_scope(self.target, ops)
        for kind, run in groupby(ops, key=lambda o: o.kind):
            batch = list(run)
            KINDS[kind].apply(self.ctx, batch)
            self.ops_applied += len(batch)

    @property
    def nft_rule_handles(self) -> list[int]:
        """The kernel's handles of the rules the last apply added, in order (empty when nft echoed none)."""
        return self.ctx.nft_rule_handles

    def read_state(self) -> KernelState:
        """Read every kind's objects back (netlink dumps and ``nft -j list table``)."""
        state = KernelState()
        for name in self.kinds:
            KINDS[name].read(self.ctx, state)
        return state

    def close(self) -> None:
        """Close the netlink socket if this backend opened it."""
        if self._own_ipr:
            self.ipr.close()
