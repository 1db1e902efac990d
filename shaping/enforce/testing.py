"""A pair of network namespaces joined by veth links, for root-only tests and benchmarks (no shell)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute, netns


@dataclass(frozen=True)
class NetnsPair:
    """Namespaces ``a`` (the tenant side, shaped) and ``b`` (the peer); link i is ``a_links[i]``/``b_links[i]``."""

    a: str
    b: str
    a_links: tuple[str, ...]
    b_links: tuple[str, ...]
    a_addrs: tuple[str, ...]
    b_addrs: tuple[str, ...]


@contextmanager
def netns_pair(
    prefix: str, subnets: tuple[int, ...] = (10,), offloads: bool = True, mtu: int = 1500
) -> Iterator[NetnsPair]:
    """Create ``{prefix}-a`` and ``{prefix}-b`` joined by one veth per subnet 10.200.S.0/24 (.1 in a, .2 in b).

    Everything is removed on exit, also after failures. With ``offloads=False`` TSO/GSO/GRO are
    turned off (ethtool, argv), so HTB and nft see wire-sized packets rather than 64 KB ones.
    """
    pair = NetnsPair(
        a=f"{prefix}-a",
        b=f"{prefix}-b",
        a_links=tuple(f"{prefix}-a{i}" for i in range(len(subnets))),
        b_links=tuple(f"{prefix}-b{i}" for i in range(len(subnets))),
        a_addrs=tuple(f"10.200.{s}.1" for s in subnets),
        b_addrs=tuple(f"10.200.{s}.2" for s in subnets),
    )
    for ns in (pair.a, pair.b):
        if ns in netns.listnetns():
            netns.remove(ns)  # a leftover of an interrupted run of ours (the prefix is ours)
    netns.create(pair.a)
    netns.create(pair.b)
    try:
        with IPRoute() as ipr:
            for la, lb in zip(pair.a_links, pair.b_links, strict=True):
                ipr.link("add", ifname=la, kind="veth", peer={"ifname": lb, "net_ns_fd": pair.b})
                ipr.link("set", index=ipr.link_lookup(ifname=la)[0], net_ns_fd=pair.a)
        for ns, links, addrs in ((pair.a, pair.a_links, pair.a_addrs), (pair.b, pair.b_links, pair.b_addrs)):
            with IPRoute(netns=ns, flags=0) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                for link, addr in zip(links, addrs, strict=True):
                    idx = ipr.link_lookup(ifname=link)[0]
                    ipr.addr("add", index=idx, address=addr, prefixlen=24)
                    ipr.link("set", index=idx, state="up", mtu=mtu)
                    if not offloads:
                        subprocess.run(
                            [
                                "ip",
                                "netns",
                                "exec",
                                ns,
                                "ethtool",
                                "-K",
                                link,
                                "tso",
                                "off",
                                "gso",
                                "off",
                                "gro",
                                "off",
                            ],
                            check=True,
                            capture_output=True,
                            timeout=10,
                        )
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            if ns in netns.listnetns():
                netns.remove(ns)
