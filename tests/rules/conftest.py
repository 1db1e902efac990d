"""A small, valid rule set shared by the rules and service tests."""

from __future__ import annotations

import pytest

from shaping.config import PathConfig, ScenarioConfig
from shaping.rules import ClassRule, EntityRule, Match, RuleSet, StaticAction
from shaping.spec import QoSRequirement


def provider_scenario() -> ScenarioConfig:
    """Two provider paths of 200 and 100 Mbit/s, default action levels."""
    return ScenarioConfig(name="provider", paths=[PathConfig(name="eth0", capacity_mbps=200.0),
                                                  PathConfig(name="eth1", capacity_mbps=100.0)])


def acme_rules(tenant: str = "acme") -> RuleSet:
    """Tenant with a VM (adaptive) and a subnet (static), three disjoint classes."""
    return RuleSet(
        tenant=tenant,
        cap_mbps=100.0,
        revision=3,
        entities=(
            EntityRule(name="web-vm", kind="vm", cidrs=("10.0.0.10/32",), mode="adaptive"),
            EntityRule(name="net", kind="subnet", cidrs=("10.0.1.0/24",)),
        ),
        classes=(
            ClassRule(name="game", entity="web-vm", app="gaming", mbps=10.0,
                      match=Match(protocol="udp", ports=(27015,)),
                      action=StaticAction(rate_mbps=10, ceil_mbps=20, priority=0, dscp=46),
                      qos=QoSRequirement(max_p99_ms=40.0, max_loss=0.01)),
            ClassRule(name="backup", entity="net", app="bulk", mbps=100.0, match=Match(ports=(873,)),
                      action=StaticAction(rate_mbps=20, ceil_mbps=100, priority=3, dscp=0, drop_prob=0.01,
                                          path="eth1"),
                      qos=QoSRequirement(min_mbps=10.0)),
            ClassRule(name="site", entity="web-vm", app="web", mbps=20.0, match=Match(ports=(443,)),
                      action=StaticAction(rate_mbps=30, ceil_mbps=80, priority=1, dscp=18)),
        ),
    )


@pytest.fixture
def scenario() -> ScenarioConfig:
    """The provider's paths and levels."""
    return provider_scenario()


@pytest.fixture
def rules() -> RuleSet:
    """The acme rule set."""
    return acme_rules()
