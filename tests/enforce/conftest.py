"""Fixtures of the enforcement tests: a two-path tenant, plans, and a root-only namespace pair."""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import replace

import pytest

from shaping.config import ClassConfig, EntityConfig, PathConfig, ScenarioConfig, TenantConfig
from shaping.enforce import EnforceConfig, EnforceTarget, target_from_spec
from shaping.enforce.testing import NetnsPair, netns_pair
from shaping.spec import ClassShaping, ShapingPlan, TenantSpec, burst_bytes, tenant_spec

#: This helper's namespace prefix and /24s (10.200.10.0/24 .. 10.200.29.0/24).
PREFIX = "fse"


def make_spec(n_classes: int = 3, cidrs: tuple[str, ...] = ("10.200.10.1/32", "10.200.11.1/32"),
              game_dst: tuple[str, ...] = ()) -> TenantSpec:
    """A tenant on two paths: class 0 gaming (udp 5000, to ``game_dst`` when given), the rest bulk/web on tcp
    ports 6000+i."""
    classes = [ClassConfig(name="game", app="gaming", protocol="udp", ports=[5000], dst_cidrs=list(game_dst))]
    for i in range(1, n_classes):
        classes.append(ClassConfig(name=f"c{i}", app="bulk" if i % 2 else "web", protocol="tcp", ports=[6000 + i]))
    scenario = ScenarioConfig(
        paths=[PathConfig(name="p0"), PathConfig(name="p1")],
        tenants=[
            TenantConfig(
                name="acme",
                cap_mbps=100.0,
                entities=[EntityConfig(name="vm0", cidrs=list(cidrs))],
                classes=classes,
            )
        ],
    )
    return tenant_spec(scenario, 0)


def make_plan(spec: TenantSpec, rate: float = 10.0, **over: object) -> ShapingPlan:
    """Every class at ``rate``, ceil 50, priority = index, DSCP 0, no drops, path 0; ``over``: fields of class 0."""
    classes = [ClassShaping(rate, 50.0, burst_bytes(rate), min(i, 7), 0, 0.0, 0) for i in range(len(spec.classes))]
    classes[0] = replace(classes[0], **over)  # type: ignore[arg-type]
    return ShapingPlan(spec.name, tuple(classes), 80.0)


def with_class(plan: ShapingPlan, index: int, **over: object) -> ShapingPlan:
    """The plan with some fields of one class replaced."""
    classes = list(plan.classes)
    classes[index] = replace(classes[index], **over)  # type: ignore[arg-type]
    return replace(plan, classes=tuple(classes))


@pytest.fixture
def spec() -> TenantSpec:
    return make_spec()


@pytest.fixture
def target(spec: TenantSpec) -> EnforceTarget:
    return target_from_spec(spec, EnforceConfig(interfaces=("eth-p0", "eth-p1"), gateways=("10.200.10.2", None)))


def need_root() -> None:
    """Skip unless we can create namespaces and the tools exist."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, tc, nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs the {tool} binary")


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[NetnsPair]:
    """Two namespaces joined by two veth links (10.200.10.0/24 and 10.200.11.0/24), removed afterwards."""
    need_root()
    tag = f"{PREFIX}{zlib.crc32(request.node.name.encode()) % 1000:03d}"
    with netns_pair(tag, (10, 11)) as p:
        yield p


def pair_target(spec: TenantSpec, p: NetnsPair) -> EnforceTarget:
    """The target of a namespace pair: side a's links are the paths, side b's addresses the gateways."""
    return target_from_spec(spec, EnforceConfig(interfaces=p.a_links, gateways=p.b_addrs, netns=p.a))
