"""What the kernel cannot carry is refused, by name, before any operation is built or sent."""

from __future__ import annotations

import pytest

from shaping.config import ClassConfig, EntityConfig, PathConfig, ScenarioConfig, TenantConfig
from shaping.enforce import (
    EnforceConfig,
    EnforceTarget,
    HtbClass,
    KernelEnforcer,
    NetlinkBackend,
    RecordingBackend,
    plan_operations,
    target_from_spec,
)
from shaping.enforce.overlaps import check_disjoint_classes
from shaping.spec import SpecError, TenantSpec, tenant_spec
from tests.enforce.conftest import make_plan, with_class


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"rate_mbps": 1e-9}, r"class 'game': rate 1e-09 Mbit/s is too small for HTB with a \d+-byte burst"),
        ({"burst_bytes": -100}, "class 'game': burst_bytes must be > 0, got -100"),
        ({"burst_bytes": 0}, "class 'game': burst_bytes must be > 0, got 0"),
        ({"burst_bytes": 2**33}, "class 'game': burst 8589934592 bytes outside"),
        ({"priority": 99}, "class 'game': priority 99 outside HTB's 0..7"),
        ({"priority": -1}, "class 'game': priority must be >= 0"),
    ],
)
def test_values_htb_cannot_carry_are_refused_by_name(spec: TenantSpec, target: EnforceTarget, over, message):
    backend = RecordingBackend(target)
    enforcer = KernelEnforcer(spec, target, backend=backend, fast_path=False)
    with pytest.raises(SpecError, match=message):
        enforcer.apply(with_class(make_plan(spec), 0, **over))
    assert backend.log == []  # nothing reached the backend


def test_the_highest_priority_passes_unclamped(spec: TenantSpec, target: EnforceTarget):
    ops = plan_operations(spec, with_class(make_plan(spec), 0, priority=7), target)
    assert {o.prio for o in ops if isinstance(o, HtbClass) and o.classid == target.classid(0)} == {7}


def test_a_tiny_root_rate_is_refused(spec: TenantSpec, target: EnforceTarget):
    plan = make_plan(spec, rate=1e-9)
    plan = type(plan)(plan.tenant, tuple(c.__class__(1e-9, 1e-9, 3000, 0, 0, 0.0, 0) for c in plan.classes), 1e-9)
    with pytest.raises(SpecError, match="root: rate 1e-09 Mbit/s is too small"):
        plan_operations(spec, plan, target)


class _Links:
    """A pyroute2 stand-in: interfaces by name with their flags."""

    def __init__(self, flags: dict[str, int]) -> None:
        self.flags = flags
        self.names = list(flags)
        self.closed = False

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.names.index(ifname) + 1] if ifname in self.flags else []

    def get_links(self, idx: int) -> list[dict[str, int]]:
        return [{"flags": self.flags[self.names[idx - 1]]}]

    def close(self) -> None:
        self.closed = True


def test_a_loopback_device_is_refused_by_its_flag_whatever_its_name(target: EnforceTarget):
    up, loopback = 0x1, 0x8 | 0x1
    NetlinkBackend(target, ipr=_Links({"eth-p0": up, "eth-p1": up}), nft=object())
    with pytest.raises(SpecError, match="'eth-p1' is a loopback device"):
        NetlinkBackend(target, ipr=_Links({"eth-p0": up, "eth-p1": loopback}), nft=object())
    NetlinkBackend(target, ipr=_Links({"eth-p0": up}), nft=object())  # not there yet: left to the first apply


def _spec(*classes: ClassConfig, net: str = "10.0.0.0/24") -> TenantSpec:
    entities = [EntityConfig(name="vm", cidrs=["10.0.0.5/32"]), EntityConfig(name="net", kind="subnet", cidrs=[net])]
    scenario = ScenarioConfig(paths=[PathConfig(name="p0")],
                              tenants=[TenantConfig(name="t", entities=entities, classes=list(classes))])  # fmt: skip
    return tenant_spec(scenario, 0)


def test_overlapping_classes_are_refused_naming_both():
    a = ClassConfig(name="web", entity="vm", protocol="tcp", ports=[443])
    b = ClassConfig(name="all", entity="net", protocol="tcp")  # the subnet holds vm's address, any port
    with pytest.raises(SpecError, match=r"classes 'web' and 'all' overlap.*'all' would lose them to 'web'"):
        check_disjoint_classes(_spec(a, b))
    spec = _spec(a, b)
    target = target_from_spec(spec, EnforceConfig(interfaces=("eth0",)))
    with pytest.raises(SpecError, match="overlap"):  # whatever kinds the host supports: no nft, no classify rules
        KernelEnforcer(spec, target, backend=RecordingBackend(target), capabilities=None, dry_run=True)


@pytest.mark.parametrize(
    ("b", "net"),
    [
        (ClassConfig(name="all", entity="net", protocol="udp"), "10.0.0.0/24"),  # another protocol
        (ClassConfig(name="all", entity="net", protocol="tcp", ports=[80]), "10.0.0.0/24"),  # other ports
        (ClassConfig(name="all", entity="net", protocol="tcp"), "10.0.1.0/24"),  # other addresses
        (ClassConfig(name="all", entity="net", protocol="tcp", dst_cidrs=["192.0.2.0/24"]), "10.0.0.0/24"),
        (ClassConfig(name="all", entity="net", protocol="tcp", match_dscp=46), "10.0.0.0/24"),
    ],
)
def test_disjoint_classes_pass(b: ClassConfig, net: str):
    a = ClassConfig(name="web", entity="vm", protocol="tcp", ports=[443], dst_cidrs=["198.51.100.0/24"],
                    match_dscp=0)  # fmt: skip
    check_disjoint_classes(_spec(a, b, net=net))


def test_more_priority_levels_than_htb_serves_are_refused(spec: TenantSpec):
    from dataclasses import replace

    with pytest.raises(SpecError, match="priority_levels 9 above the 8 HTB serves"):
        target_from_spec(replace(spec, priority_levels=9), EnforceConfig(interfaces=("a", "b")))
    target_from_spec(replace(spec, priority_levels=8), EnforceConfig(interfaces=("a", "b")))
