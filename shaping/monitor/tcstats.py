"""Per-class HTB counters and interface counters over netlink (pyroute2), summed over the shaped interfaces."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: A class id as the kernel packs it: major << 16 | minor.
ClassId = int


@dataclass(frozen=True)
class ClassCounters:
    """Cumulative counters of one traffic class (bytes and packets sent, drops, overlimits) and its backlog now."""

    bytes: int = 0
    packets: int = 0
    drops: int = 0
    overlimits: int = 0
    backlog_bytes: int = 0
    qlen: int = 0

    def __add__(self, other: ClassCounters) -> ClassCounters:
        return ClassCounters(
            self.bytes + other.bytes, self.packets + other.packets, self.drops + other.drops,
            self.overlimits + other.overlimits, self.backlog_bytes + other.backlog_bytes, self.qlen + other.qlen,
        )  # fmt: skip


@dataclass(frozen=True)
class InterfaceCounters:
    """Cumulative counters of one interface (IFLA_STATS64)."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


class ClassStatsSource(Protocol):
    """Where per-class and interface counters come from (netlink, or a fake in tests)."""

    def read_classes(self) -> dict[ClassId, ClassCounters]:
        """Counters of every class id, summed over the shaped interfaces."""
        ...

    def read_interfaces(self) -> dict[str, InterfaceCounters]:
        """Counters of each shaped interface by name."""
        ...

    def close(self) -> None:
        """Release the netlink socket."""
        ...


def _get(msg: Any, name: str) -> Any:
    get = getattr(msg, "get_attr", None)
    return get(name) if get is not None else None


def class_counters(msg: Any) -> ClassCounters:
    """Counters of one RTM_NEWTCLASS message: TCA_STATS2 (basic, queue) when present, else TCA_STATS."""
    stats2 = _get(msg, "TCA_STATS2")
    if stats2 is not None:
        basic = stats2.get_attr("TCA_STATS_BASIC") or {}
        queue = stats2.get_attr("TCA_STATS_QUEUE") or {}
        return ClassCounters(
            int(basic.get("bytes", 0)), int(basic.get("packets", 0)), int(queue.get("drops", 0)),
            int(queue.get("overlimits", 0)), int(queue.get("backlog", 0)), int(queue.get("qlen", 0)),
        )  # fmt: skip
    st = _get(msg, "TCA_STATS") or {}
    return ClassCounters(
        int(st.get("bytes", 0)), int(st.get("packets", 0)), int(st.get("drop", 0)),
        int(st.get("overlimits", 0)), int(st.get("backlog", 0)), int(st.get("qlen", 0)),
    )  # fmt: skip


def sum_classes(messages: Iterable[Any], kind: str | None = "htb") -> dict[ClassId, ClassCounters]:
    """Sum the counters of class messages by class id (the same id on several path interfaces adds up)."""
    out: dict[ClassId, ClassCounters] = {}
    for msg in messages:
        if kind is not None and _get(msg, "TCA_KIND") not in (kind, None):
            continue
        handle = int(msg["handle"])
        out[handle] = out.get(handle, ClassCounters()) + class_counters(msg)
    return out


class NetlinkClassStats:
    """Reads HTB class and interface counters over netlink in the caller's or a named namespace.

    By default the counters come from shaping.enforce's FastStats (the same RTM_GETTCLASS and
    RTM_GETLINK requests, struct-decoded): pyroute2 0.9.7 decodes every attribute of every class
    into Python objects, ~1-2 ms per class, a large share of a 100 ms interval. pyroute2 still
    resolves interface names, and decodes everything when ``fast`` is False or FastStats is missing.

    Args:
        interfaces: the shaped interfaces (one HTB tree each, the same class ids on each).
        netns: namespace name under /run/netns; None: the caller's.
        ipr: an open pyroute2 IPRoute to use (not closed by ``close``); None: open one.
        fast: read counters with FastStats when it is importable.
    """

    def __init__(
        self, interfaces: Iterable[str], netns: str | None = None, ipr: Any = None, fast: bool = True
    ) -> None:
        self.interfaces = tuple(interfaces)
        if not self.interfaces:
            raise ValueError("NetlinkClassStats needs at least one interface")
        self._own = ipr is None
        if ipr is None:
            from pyroute2 import IPRoute

            # flags=0: never create the namespace as a side effect (pyroute2 defaults to O_CREAT).
            ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
        self.ipr = ipr
        self._index: dict[str, int] = {}
        self._fast: Any = None
        if fast:
            try:
                from shaping.enforce.fast_stats import FastStats

                self._fast = FastStats(netns)
            except ImportError:
                self._fast = None  # shaping.enforce absent: pyroute2 decodes the dumps

    def _ifindex(self, name: str) -> int:
        if name not in self._index:
            found = self.ipr.link_lookup(ifname=name)
            if not found:
                raise LookupError(f"interface {name!r} not found (namespace of the monitor)")
            self._index[name] = int(found[0])
        return self._index[name]

    def read_classes(self) -> dict[ClassId, ClassCounters]:
        """Counters of every HTB class on the interfaces, summed by class id."""
        if self._fast is not None:
            raw = self._fast.read_classes([self._ifindex(n) for n in self.interfaces])
            return {
                int(h): ClassCounters(s.bytes, s.packets, s.drops, s.overlimits, s.backlog, s.qlen)
                for h, s in raw.items()
            }
        msgs: list[Any] = []
        for name in self.interfaces:
            msgs.extend(self.ipr.get_classes(index=self._ifindex(name)))
        return sum_classes(msgs)

    def read_interfaces(self) -> dict[str, InterfaceCounters]:
        """IFLA_STATS64 of each interface."""
        out = {}
        if self._fast is not None:
            links = self._fast.read_links([self._ifindex(n) for n in self.interfaces])
            for name in self.interfaces:
                f = links.get(self._ifindex(name))
                if f is not None:
                    out[name] = InterfaceCounters(f.rx_bytes, f.tx_bytes, f.rx_packets, f.tx_packets,
                                                  f.rx_dropped, f.tx_dropped)  # fmt: skip
            return out
        for name in self.interfaces:
            (link,) = self.ipr.get_links(self._ifindex(name))
            s: Mapping[str, int] = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS") or {}
            out[name] = InterfaceCounters(
                int(s.get("rx_bytes", 0)), int(s.get("tx_bytes", 0)), int(s.get("rx_packets", 0)),
                int(s.get("tx_packets", 0)), int(s.get("rx_dropped", 0)), int(s.get("tx_dropped", 0)),
            )  # fmt: skip
        return out

    def close(self) -> None:
        """Close the sockets this object opened."""
        if self._fast is not None:
            self._fast.close()
        if self._own:
            self.ipr.close()


class NullClassStats:
    """No counters (dry runs without the interfaces): every class reads zero."""

    def read_classes(self) -> dict[ClassId, ClassCounters]:
        """Nothing."""
        return {}

    def read_interfaces(self) -> dict[str, InterfaceCounters]:
        """Nothing."""
        return {}

    def close(self) -> None:
        """Nothing to release."""
