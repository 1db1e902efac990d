"""The federation's own network beside several tenant testbeds: a namespace for the SuperLink, one veth to each tenant.

    {p}-fl ns (SuperLink on lo 10.200.F+9.1)
      {p}-f0 10.200.F.1    <-veth->  {p}0-fl 10.200.F.2    in tenant 0's namespace
      {p}-f1 10.200.F+1.1  <-veth->  {p}1-fl 10.200.F+1.2  in tenant 1's namespace
      ...

Each tenant namespace gets one route, to the SuperLink's address via its veth: the federation's traffic (a
management network, as a provider's control plane would be) never crosses the tenant's shaped path links or
the bottleneck. Only the namespace and links named with the prefix and only 10.200.0.0/16 addresses are
created; the host's interfaces, routes and rules are never touched.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyroute2 import NetNS, netns

from shaping.testbed.topology import TestbedError

#: Linux's CLONE_NEWNET (sched.h): setns() into a network namespace.
CLONE_NEWNET = 0x40000000
#: Third octets a federation network of N tenants takes: fed_base .. fed_base + N - 1, and fed_base + SUPERLINK_OFFSET.
SUPERLINK_OFFSET = 9

Connector = Callable[[tuple[str, int], float], socket.socket]


@dataclass(frozen=True)
class FedNetConfig:
    """Names and addresses of the federation network."""

    prefix: str = "lf"
    """Prefix of its namespace and links."""
    subnet_base: int = 70
    """Third octet of the first tenant's veth /24; the SuperLink's address is 10.200.(base + 9).1."""
    tenant_namespaces: tuple[str, ...] = ()
    """The tenants' namespaces (already built), one veth each."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.tenant_namespaces) <= SUPERLINK_OFFSET:
            raise ValueError(f"the federation network links 1 to {SUPERLINK_OFFSET} tenants, got "
                             f"{len(self.tenant_namespaces)}")  # fmt: skip
        if not 0 <= self.subnet_base <= 255 - SUPERLINK_OFFSET:
            raise ValueError(f"subnet_base {self.subnet_base} leaves 10.200.0.0/16")
        if len(self.prefix) > 8:
            raise ValueError(f"prefix {self.prefix!r} is too long for 15-character link names")

    @property
    def namespace(self) -> str:
        """The SuperLink's namespace."""
        return f"{self.prefix}-fl"

    @property
    def superlink_addr(self) -> str:
        """The SuperLink's address (on the namespace's loopback)."""
        return _addr(self.subnet_base + SUPERLINK_OFFSET, 1)

    def fed_link(self, i: int) -> str:
        """Tenant i's veth on the SuperLink's side."""
        return f"{self.prefix}-f{i}"

    def tenant_link(self, i: int) -> str:
        """Tenant i's veth in its namespace."""
        return f"{self.prefix}{i}-fl"

    def addrs(self, i: int) -> tuple[str, str]:
        """(SuperLink side, tenant side) addresses of tenant i's veth."""
        return _addr(self.subnet_base + i, 1), _addr(self.subnet_base + i, 2)


def _addr(octet: int, host: int) -> str:
    out = f"10.200.{octet}.{host}"
    if ipaddress.ip_address(out) not in ipaddress.ip_network("10.200.0.0/16"):
        raise ValueError(f"{out} is outside 10.200.0.0/16")
    return out


def _up(ipr: NetNS, ifname: str, address: str | None, prefixlen: int = 24) -> None:
    idx = ipr.link_lookup(ifname=ifname)[0]
    if address is not None:
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")


def build(cfg: FedNetConfig) -> None:
    """Create the SuperLink's namespace, its address and one veth (and route) per tenant namespace."""
    ns = cfg.namespace
    netns.create(ns)
    with NetNS(ns) as fed:
        _up(fed, "lo", None)
        fed.addr("add", index=fed.link_lookup(ifname="lo")[0], address=cfg.superlink_addr, prefixlen=32)
        for i, tenant_ns in enumerate(cfg.tenant_namespaces):
            fed_side, tenant_side = cfg.addrs(i)
            fed.link("add", ifname=cfg.fed_link(i), kind="veth",
                     peer={"ifname": cfg.tenant_link(i), "net_ns_fd": tenant_ns})  # fmt: skip
            _up(fed, cfg.fed_link(i), fed_side)
            with NetNS(tenant_ns) as ten:
                _up(ten, cfg.tenant_link(i), tenant_side)
                ten.route("add", dst=f"{cfg.superlink_addr}/32", gateway=fed_side)


def teardown(cfg: FedNetConfig) -> None:
    """Remove the SuperLink's namespace (its veths, and their peers in the tenants' namespaces, go with it);
    never raises."""
    if cfg.namespace in netns.listnetns():
        try:
            netns.remove(cfg.namespace)
        except OSError:
            pass


def connector(ns: str, netns_dir: str = "/run/netns") -> Connector:
    """A ``socket.create_connection`` that connects from inside namespace ``ns``.

    setns(2) with CLONE_NEWNET switches only the calling thread, so a throwaway thread enters the namespace,
    makes the socket (which stays in that namespace) and ends; the caller's threads never move.
    """

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        out: dict[str, socket.socket | BaseException] = {}

        def enter_and_connect() -> None:
            try:
                fd = os.open(os.path.join(netns_dir, ns), os.O_RDONLY)
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                out["sock"] = socket.create_connection(address, timeout=timeout)
            except BaseException as err:  # re-raised in the caller's thread
                out["err"] = err

        th = threading.Thread(target=enter_and_connect, name=f"connect-in-{ns}", daemon=True)
        th.start()
        th.join()
        got = out.get("sock", out.get("err"))
        if isinstance(got, socket.socket):
            return got
        raise got if isinstance(got, BaseException) else TestbedError(f"no connection from {ns}")

    return connect


def in_namespace(namespaces: dict[str, str]) -> Callable[[str, Sequence[str]], list[str]]:
    """An argv launcher (experiments.deploy_local.LocalDeployment's) that runs process NAME in namespaces[NAME]
    (`ip netns exec`, which execs the command: signals reach it directly) and any other in this one."""

    def launch(name: str, argv: Sequence[str]) -> list[str]:
        ns = namespaces.get(name)
        return list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]

    return launch
