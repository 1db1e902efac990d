"""What the kernel and the process allow, and what FedShape does instead when something is missing."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shaping.enforce.nftcli import NftCli, NftError

#: Bit of CAP_NET_ADMIN in /proc/PID/status CapEff (include/uapi/linux/capability.h).
CAP_NET_ADMIN = 12


@dataclass(frozen=True)
class Capabilities:
    """The probe's findings; ``kinds`` is what the enforcer can use, ``notes`` say why and what instead."""

    cap_net_admin: bool
    htb: bool
    nftables: bool
    policy_routing: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def kinds(self) -> tuple[str, ...]:
        """Operation kinds the enforcer may apply ("htb", "nft", "routing")."""
        if not self.cap_net_admin:
            return ()
        out = []
        if self.htb:
            out.append("htb")
        if self.nftables:
            out.append("nft")
            if self.policy_routing:
                out.append("routing")
        return tuple(out)

    @property
    def complete(self) -> bool:
        """Everything FedShape can enforce is available."""
        return self.kinds == ("htb", "nft", "routing")

    def summary(self) -> str:
        """One paragraph for logs and the CLI."""
        state = "full enforcement" if self.complete else f"degraded enforcement (kinds {list(self.kinds)})"
        return "; ".join([state, *self.notes])


def _has_cap(proc_root: Path, bit: int) -> bool:
    try:
        for line in (proc_root / "self" / "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def _has_module(name: str, sys_root: Path, modules_root: Path, release: str) -> bool:
    # A built-in or loaded sch_htb shows in /sys/module (it has module parameters); an unloaded module
    # is autoloaded by the kernel on first use when its .ko is installed.
    if (sys_root / "module" / name).exists():
        return True
    kdir = modules_root / release / "kernel" / "net" / "sched"
    return any(kdir.glob(f"{name}.ko*")) if kdir.is_dir() else False


def _nft_works(netns: str | None, which: Callable[[str], str | None]) -> tuple[bool, str]:
    if which("nft") is None:
        return False, "the nft binary is not installed"
    try:
        NftCli(netns)({"nftables": [{"list": {"tables": {}}}]})
    except (NftError, OSError) as err:
        return False, f"nft does not work here: {err}"
    return True, ""


def _rules_work(netns: str | None) -> bool:
    try:
        from pyroute2 import IPRoute

        with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
            ipr.get_rules(family=2)
    except Exception:  # any netlink or namespace error means we cannot use policy routing
        return False
    return True


def probe_capabilities(
    netns: str | None = None,
    proc_root: str | os.PathLike[str] = "/proc",
    sys_root: str | os.PathLike[str] = "/sys",
    modules_root: str | os.PathLike[str] = "/lib/modules",
    which: Callable[[str], str | None] = shutil.which,
) -> Capabilities:
    """Probe without changing anything: privileges, sch_htb, nftables and policy routing.

    Args:
        netns: the namespace the enforcer will act in (None: the current one).
        proc_root, sys_root, modules_root: OS roots (tests hand in fixtures).
        which: finds executables (tests hand in a fake).
    """
    notes: list[str] = []
    cap = _has_cap(Path(proc_root), CAP_NET_ADMIN)
    if not cap:
        notes.append("no CAP_NET_ADMIN: nothing can be enforced; FedShape records plans (dry run) instead")
    htb = _has_module("sch_htb", Path(sys_root), Path(modules_root), platform.release())
    if not htb:
        notes.append(
            "no sch_htb: rates, ceilings and priorities are not enforced; "
            "DSCP marks, drops and paths still are (nftables), so the provider's DSCP-aware scheduler does the rest"
        )
    nft, why = _nft_works(netns, which) if cap else (False, "not probed without CAP_NET_ADMIN")
    if not nft:
        notes.append(
            f"no nftables ({why}): no classification, DSCP marks, drops or path choice; "
            "only the tenant's aggregate HTB rate is enforced (all traffic in the default class)"
        )
    rules = _rules_work(netns) if cap else False
    if not rules:
        notes.append("no policy routing: every class takes the main routing table's path")
    return Capabilities(cap, htb, nft, rules, tuple(notes))
