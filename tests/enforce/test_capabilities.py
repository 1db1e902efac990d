"""The capability probe on fake /proc, /sys and module trees, and what the enforcer does with its answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from shaping.enforce import Capabilities, KernelEnforcer, RecordingBackend, probe_capabilities
from shaping.enforce.target import EnforceTarget
from shaping.spec import TenantSpec
from tests.enforce.conftest import make_plan


def fake_roots(tmp_path: Path, cap_eff: int, htb: str | None) -> dict[str, Path]:
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "status").write_text(f"Name:\tpython\nCapEff:\t{cap_eff:016x}\n")
    sys_root = tmp_path / "sys"
    (sys_root / "module").mkdir(parents=True)
    modules = tmp_path / "modules"
    if htb == "builtin":
        (sys_root / "module" / "sch_htb").mkdir()
    elif htb == "module":
        import platform

        kdir = modules / platform.release() / "kernel" / "net" / "sched"
        kdir.mkdir(parents=True)
        (kdir / "sch_htb.ko.xz").write_bytes(b"")
    return {"proc_root": tmp_path / "proc", "sys_root": sys_root, "modules_root": modules}


def test_no_cap_net_admin_means_dry_run(tmp_path: Path) -> None:
    caps = probe_capabilities(**fake_roots(tmp_path, 0, "builtin"), which=lambda _: "/usr/sbin/nft")  # type: ignore[arg-type]
    assert not caps.cap_net_admin and caps.kinds == ()
    assert "no CAP_NET_ADMIN" in caps.summary() and "dry run" in caps.summary()


@pytest.mark.parametrize("where", ["builtin", "module"])
def test_htb_found_builtin_or_as_module(tmp_path: Path, where: str) -> None:
    caps = probe_capabilities(**fake_roots(tmp_path, 0, where), which=lambda _: None)  # type: ignore[arg-type]
    assert caps.htb


def test_missing_htb_and_nft_are_explained(tmp_path: Path) -> None:
    roots = fake_roots(tmp_path, 1 << 12, None)
    caps = probe_capabilities(**roots, which=lambda _: None)  # type: ignore[arg-type]
    assert caps.cap_net_admin and not caps.htb and not caps.nftables
    text = caps.summary()
    assert "no sch_htb" in text and "DSCP marks, drops and paths still are" in text
    assert "no nftables (the nft binary is not installed)" in text
    assert "htb" not in caps.kinds and "nft" not in caps.kinds


def test_enforcer_plans_only_available_kinds(spec: TenantSpec, target: EnforceTarget) -> None:
    caps = Capabilities(cap_net_admin=True, htb=False, nftables=True, policy_routing=False)
    enf = KernelEnforcer(spec, target, backend=RecordingBackend(target), capabilities=caps)
    kinds = {op.kind for op in enf.apply(make_plan(spec)).ops}
    assert kinds == {"nft"}
    no_priv = Capabilities(cap_net_admin=False, htb=True, nftables=True, policy_routing=True)
    dry = KernelEnforcer(spec, target, capabilities=no_priv, fast_path=False)
    assert isinstance(dry.backend, RecordingBackend)
    assert dry.apply(make_plan(spec)).ops  # recorded, not applied
