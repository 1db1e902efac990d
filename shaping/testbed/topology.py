"""Namespaced testbed: a tenant host with two path links, a router with a bottleneck and a second link, a sink.

    tenant ns                      router ns                          sink ns
    {p}-t0 10.200.N.1  <-veth->  {p}-r0 10.200.N.2    {p}-b0 10.200.N+2.1 <-veth-> {p}-s0 10.200.N+2.2
    {p}-t1 10.200.N+1.1 <-veth-> {p}-r1 10.200.N+1.2  {p}-b1 10.200.N+3.1 <-veth-> {p}-s1 10.200.N+3.2
                                                                          lo: sink service 10.200.N+4.1

Path i is the tenant's interface {p}-ti (the interface name a ShapingPlan's path index refers to).
The router forwards what arrives on r0 out of b0, the bottleneck (TBF at the path's capacity with
a deep buffer, the provider's queue), and what arrives on r1 out of b1 (policy routing on the
input interface). Everything returns over b0 and then the path link of its destination address,
whose reverse directions are not shaped. A path fails when a policy rule sends what arrives on its
router link to the router's blackhole table (shaping.testbed.paths). The tenant reaches the sink
service over path 0 by default and over path i from a socket bound to {p}-ti (a second route at
metric PATH_ROUTE_METRIC, which only such sockets take): that is how the path probes stay on their
path. Only namespaces and links named with the prefix and only 10.200.0.0/16 addresses are created;
the host's interfaces, routes and rules are never touched.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import NetNS, netns

#: Routing table of the router for traffic that came in on path 1's link.
ROUTER_PATH1_TABLE = 201
#: Tenant-side routing tables that send everything out of path i (table PATH_TABLE_BASE + i).
PATH_TABLE_BASE = 100
#: Router table holding one blackhole default route: a failed path's traffic is looked up there.
ROUTER_BLACKHOLE_TABLE = 299
#: Priority of the rule that fails path i (ROUTER_DOWN_PRIORITY + i), before path 1's table (1000).
ROUTER_DOWN_PRIORITY = 900
#: Metric of the tenant's route to the sink over path 1 (taken by sockets bound to path 1's interface only).
PATH_ROUTE_METRIC = 100


class TestbedError(RuntimeError):
    """The testbed could not be built or used."""

    __test__ = False  # not a pytest test class, despite its name


@dataclass(frozen=True)
class PathLink:
    """One provider path of the testbed: its capacity and buffer at the router's egress."""

    capacity_mbps: float = 30.0
    """Rate of the router's egress TBF on this path, Mbit/s."""
    buffer_ms: float = 150.0
    """TBF queue limit in milliseconds of capacity (deep: the bufferbloat shaping is for)."""


@dataclass(frozen=True)
class TopologyConfig:
    """Names and addresses of the testbed; the third octets used are subnet_base .. subnet_base + 4."""

    prefix: str = "fst"
    """Prefix of every namespace and link name."""
    subnet_base: int = 50
    """Third octet of the first /24 (10.200.subnet_base.0/24)."""
    paths: tuple[PathLink, ...] = field(default_factory=lambda: (PathLink(), PathLink()))
    """The two provider paths (0 is the bottleneck, 1 the second link for path changes)."""
    offloads_off: bool = True
    """Turn TSO/GSO/GRO off on every link, so qdiscs see wire-size packets (veth passes 64 KB ones)."""

    def __post_init__(self) -> None:
        if len(self.paths) != 2:
            raise ValueError(f"the testbed has exactly two paths, got {len(self.paths)}")
        if not 0 <= self.subnet_base <= 251:
            raise ValueError(f"subnet_base {self.subnet_base} leaves 10.200.0.0/16")
        if len(self.prefix) > 6:
            raise ValueError(f"prefix {self.prefix!r} is too long for 15-character link names")


@dataclass(frozen=True)
class Names:
    """Namespace, link and address names derived from a TopologyConfig."""

    tenant_ns: str
    router_ns: str
    sink_ns: str
    tenant_links: tuple[str, str]
    router_in: tuple[str, str]
    router_out: tuple[str, str]
    sink_links: tuple[str, str]
    tenant_addrs: tuple[str, str]
    router_in_addrs: tuple[str, str]
    router_out_addrs: tuple[str, str]
    sink_addrs: tuple[str, str]
    sink_service: str

    @property
    def tenant_addr(self) -> str:
        """Source address of the tenant's traffic (its entity)."""
        return self.tenant_addrs[0]

    @property
    def path_gateways(self) -> tuple[str, str]:
        """Next hop of each path from the tenant (the router's side of the path link)."""
        return self.router_in_addrs

    @property
    def namespaces(self) -> tuple[str, str, str]:
        """Every namespace of the testbed."""
        return (self.tenant_ns, self.router_ns, self.sink_ns)


def names(cfg: TopologyConfig) -> Names:
    """Derive every name and address of the testbed."""
    p, n = cfg.prefix, cfg.subnet_base

    def addr(off: int, host: int) -> str:
        out = f"10.200.{n + off}.{host}"
        assert ipaddress.ip_address(out) in ipaddress.ip_network("10.200.0.0/16")
        return out

    return Names(
        tenant_ns=f"{p}-tenant",
        router_ns=f"{p}-router",
        sink_ns=f"{p}-sink",
        tenant_links=(f"{p}-t0", f"{p}-t1"),
        router_in=(f"{p}-r0", f"{p}-r1"),
        router_out=(f"{p}-b0", f"{p}-b1"),
        sink_links=(f"{p}-s0", f"{p}-s1"),
        tenant_addrs=(addr(0, 1), addr(1, 1)),
        router_in_addrs=(addr(0, 2), addr(1, 2)),
        router_out_addrs=(addr(2, 1), addr(3, 1)),
        sink_addrs=(addr(2, 2), addr(3, 2)),
        sink_service=addr(4, 1),
    )


def root_skip_reason(tools: Sequence[str] = ("ip", "tc", "nft", "ethtool")) -> str | None:
    """Why the testbed cannot run here (not root, a tool missing), or None when it can."""
    import shutil

    if os.geteuid() != 0:
        return "the testbed needs root (network namespaces, tc, nftables)"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"the testbed needs {', '.join(missing)} on PATH"
    return None


def ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs a command inside a namespace (`ip netns exec`; never a shell string)."""
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], timeout_s: float = 10.0, check: bool = True) -> str:
    """Run a command in a namespace, bounded in time; returns its stdout."""
    proc = subprocess.run(ns_argv(ns, argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} in {ns} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class Testbed:
    """A built testbed; use `testbed(cfg)` to build one that is always torn down."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, cfg: TopologyConfig) -> None:
        self.cfg = cfg
        self.names = names(cfg)

    # ---------------------------------------------------------------- netlink
    def ipr(self, ns: str) -> NetNS:
        """A netlink handle in one of the testbed's namespaces (close it after use)."""
        if ns not in self.names.namespaces:
            raise TestbedError(f"{ns!r} is not a namespace of this testbed")
        return NetNS(ns)

    def link_stats(self, ns: str, ifname: str) -> dict[str, int]:
        """tx/rx byte and packet counters of one link."""
        with self.ipr(ns) as ipr:
            link = ipr.get_links(ifname=ifname)[0]
            st = link.get_attr("IFLA_STATS64")
            return {k: int(st[k]) for k in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets", "tx_dropped")}

    def qdisc_stats(self, ns: str, ifname: str) -> dict[str, int]:
        """Root qdisc counters of one link: bytes, packets, drops, backlog."""
        with self.ipr(ns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            for q in ipr.get_qdiscs(index=idx):
                if q["parent"] == 0xFFFFFFFF:
                    basic = q.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC")
                    queue = q.get_attr("TCA_STATS2").get_attr("TCA_STATS_QUEUE")
                    return {
                        "bytes": int(basic["bytes"]),
                        "packets": int(basic["packets"]),
                        "drops": int(queue["drops"]),
                        "backlog": int(queue["backlog"]),
                    }
        raise TestbedError(f"no root qdisc on {ifname} in {ns}")

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        """Create namespaces, links, addresses, routes and the bottleneck qdiscs."""
        nm = self.names
        for ns in nm.namespaces:
            netns.create(ns)
        for ns in nm.namespaces:
            self._sysctls(ns)
        with self.ipr(nm.tenant_ns) as ten, self.ipr(nm.router_ns) as rt, self.ipr(nm.sink_ns) as sk:
            for i in range(2):
                ten.link(
                    "add",
                    ifname=nm.tenant_links[i],
                    kind="veth",
                    peer={"ifname": nm.router_in[i], "net_ns_fd": nm.router_ns},
                )
                rt.link(
                    "add",
                    ifname=nm.router_out[i],
                    kind="veth",
                    peer={"ifname": nm.sink_links[i], "net_ns_fd": nm.sink_ns},
                )
                _up(ten, nm.tenant_links[i], nm.tenant_addrs[i])
                _up(rt, nm.router_in[i], nm.router_in_addrs[i])
                _up(rt, nm.router_out[i], nm.router_out_addrs[i])
                _up(sk, nm.sink_links[i], nm.sink_addrs[i])
            _up(ten, "lo", None)
            _up(rt, "lo", None)
            _up(sk, "lo", None)
            lo = sk.link_lookup(ifname="lo")[0]
            sk.addr("add", index=lo, address=nm.sink_service, prefixlen=32)
            self._routes(ten, rt, sk)
        with self.ipr(nm.router_ns) as rt:
            for i, path in enumerate(self.cfg.paths):
                idx = rt.link_lookup(ifname=nm.router_out[i])[0]
                rt.tc(
                    "add",
                    "tbf",
                    index=idx,
                    rate=f"{int(path.capacity_mbps * 1e6)}bit",
                    burst=bottleneck_burst(path.capacity_mbps),
                    limit=bottleneck_limit(path),
                )
        if self.cfg.offloads_off:
            self._offloads_off()

    def _routes(self, ten: NetNS, rt: NetNS, sk: NetNS) -> None:
        nm = self.names
        svc = f"{nm.sink_service}/32"
        # Tenant: the sink service via path 0; the enforcement backend owns the per-path tables
        # (PATH_TABLE_BASE + i, a default route via path_gateways[i]) and the fwmark rules into them.
        ten.route("add", dst=svc, gateway=nm.router_in_addrs[0])
        # A socket bound to path 1's interface skips routes through other interfaces (SO_BINDTODEVICE):
        # this one lets the path probes of path 1 reach the sink; unbound traffic keeps the route above.
        ten.route("add", dst=svc, gateway=nm.router_in_addrs[1], priority=PATH_ROUTE_METRIC)
        # Router: path 0's traffic leaves on b0 (main table), path 1's on b1 (by input interface).
        rt.route("add", dst=svc, gateway=nm.sink_addrs[0])
        rt.route("add", dst=svc, gateway=nm.sink_addrs[1], table=ROUTER_PATH1_TABLE)
        rt.rule("add", iifname=nm.router_in[1], table=ROUTER_PATH1_TABLE, priority=1000)
        # A failed path's rule points here (no rule does while every path is up).
        rt.route("add", type="blackhole", dst="0.0.0.0/0", table=ROUTER_BLACKHOLE_TABLE)
        # Sink: everything back over b0 (the unshaped reverse direction).
        for i in range(2):
            net = ipaddress.ip_network(f"{nm.tenant_addrs[i]}/24", strict=False)
            sk.route("add", dst=str(net), gateway=nm.router_out_addrs[0])

    def _sysctls(self, ns: str) -> None:
        # Replies of path-1 traffic come back on path 0's link: loose reverse-path filtering.
        settings = {
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        }
        argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]
        run_in(ns, argv)

    def _offloads_off(self) -> None:
        nm = self.names
        pairs = [
            (nm.tenant_ns, nm.tenant_links),
            (nm.router_ns, nm.router_in),
            (nm.router_ns, nm.router_out),
            (nm.sink_ns, nm.sink_links),
        ]
        for ns, links in pairs:
            for ifname in links:
                run_in(ns, ["ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off"])

    def teardown(self) -> None:
        """Remove every namespace of the testbed (their links go with them); never raises."""
        for ns in self.names.namespaces:
            if ns in netns.listnetns():
                try:
                    netns.remove(ns)
                except OSError:
                    pass


def _up(ipr: NetNS, ifname: str, address: str | None, prefixlen: int = 24) -> None:
    idx = ipr.link_lookup(ifname=ifname)[0]
    if address is not None:
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")


#: Depth of the bottleneck's token bucket in milliseconds of capacity. TBF sends at most a bucket per
#: wake-up of its watchdog timer: with a 1 ms bucket, timers firing late on a loaded 2-core host
#: (kernel 6.18) cut the delivered rate below the configured one and the queue grew at the
#: bottleneck even with the tenant shaped to 93% of it. 20 ms absorbs that lateness.
BOTTLENECK_BURST_MS = 20.0


def bottleneck_burst(capacity_mbps: float) -> int:
    """TBF bucket of the bottleneck: BOTTLENECK_BURST_MS at its rate, at least two full-size frames."""
    return max(3028, int(capacity_mbps * 1e6 / 8 * BOTTLENECK_BURST_MS / 1000))


def bottleneck_limit(path: PathLink) -> int:
    """TBF queue limit in bytes: buffer_ms of capacity."""
    return int(path.capacity_mbps * 1e6 / 8 * path.buffer_ms / 1000)


@contextmanager
def testbed(cfg: TopologyConfig | None = None) -> Iterator[Testbed]:
    """Build the testbed, yield it, and always tear it down (also after failures).

    Leftovers of an earlier run with the same prefix are removed first.
    """
    tb = Testbed(cfg or TopologyConfig())
    tb.teardown()
    try:
        tb.build()
        yield tb
    finally:
        tb.teardown()


def describe(tb: Testbed) -> dict[str, Any]:
    """A JSON-able description of the testbed for reports."""
    nm = tb.names
    return {
        "namespaces": list(nm.namespaces),
        "paths": [
            {
                "tenant_link": nm.tenant_links[i],
                "router_egress": nm.router_out[i],
                "capacity_mbps": p.capacity_mbps,
                "buffer_ms": p.buffer_ms,
                "limit_bytes": bottleneck_limit(p),
            }
            for i, p in enumerate(tb.cfg.paths)
        ],
        "tenant_addr": nm.tenant_addr,
        "sink_service": nm.sink_service,
    }
