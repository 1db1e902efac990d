"""tenant_spec and scenario_specs: a valid tenant's spec, and a clear SpecError for every invalid field."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shaping.config import ClassConfig, EntityConfig, ScenarioConfig, TenantConfig
from shaping.spec import SpecError, TenantSpec, scenario_specs, tenant_spec


def test_valid_spec(spec: TenantSpec):
    assert spec.name == "acme" and spec.cap_mbps == 100.0
    assert [c.name for c in spec.classes] == ["game", "backup", "site"]
    assert [e.name for e in spec.vms] == ["web-vm"]
    assert spec.entity_index("net") == 1
    assert spec.paths == ("eth0", "eth1")
    assert spec.classes[0].qos.any and not spec.classes[2].qos.any
    # One tenant owns the whole first path (200 Mbit/s) but pays for 100.
    assert spec.bottleneck_share_mbps == 100.0


def test_lookup_by_name_and_index(scenario: ScenarioConfig):
    assert tenant_spec(scenario, "acme") == tenant_spec(scenario, 0)
    with pytest.raises(SpecError, match=r"unknown tenant 'nope'; scenario has \['acme'\]"):
        tenant_spec(scenario, "nope")
    with pytest.raises(SpecError, match=r"tenant index 1 out of range \(scenario has 1\)"):
        tenant_spec(scenario, 1)


def test_unknown_entity_lookup(spec: TenantSpec):
    with pytest.raises(SpecError, match="unknown entity 'db'"):
        spec.entity_index("db")


def test_fingerprint_tracks_the_layout(scenario: ScenarioConfig):
    before = tenant_spec(scenario, 0).fingerprint()
    scenario.tenants[0].classes[2].mbps = 99.0  # load is not part of the layout
    assert tenant_spec(scenario, 0).fingerprint() == before
    scenario.tenants[0].classes[2].app = "video"
    assert tenant_spec(scenario, 0).fingerprint() != before


def tenant0(s: ScenarioConfig) -> TenantConfig:
    return s.tenants[0]


def set_qos(field: str, value: float) -> Callable[[ScenarioConfig], None]:
    return lambda s: setattr(tenant0(s).classes[0].qos, field, value)


def set_class(field: str, value: object) -> Callable[[ScenarioConfig], None]:
    return lambda s: setattr(tenant0(s).classes[0], field, value)


def set_scenario(field: str, value: object) -> Callable[[ScenarioConfig], None]:
    return lambda s: setattr(s, field, value)


INVALID: list[tuple[str, Callable[[ScenarioConfig], None], str]] = [
    ("cap", lambda s: setattr(tenant0(s), "cap_mbps", 0.0), r"tenant 'acme': cap_mbps must be > 0, got 0.0"),
    ("no entities", lambda s: setattr(tenant0(s), "entities", []), "needs at least one entity"),
    ("no classes", lambda s: setattr(tenant0(s), "classes", []), "needs at least one traffic class"),
    ("duplicate entity", lambda s: tenant0(s).entities.append(EntityConfig(name="net", kind="subnet")),
     r"duplicate entity names \['web-vm', 'net', 'net'\]"),
    ("entity kind", lambda s: setattr(tenant0(s).entities[1], "kind", "vpc"),
     "entity 'net' has kind 'vpc', expected one of"),
    ("bad cidr", lambda s: setattr(tenant0(s).entities[1], "cidrs", ["10.0.1.0/33"]),
     "entity 'net' has an invalid address '10.0.1.0/33'"),
    ("no cidr", lambda s: setattr(tenant0(s).entities[1], "cidrs", []), "entity 'net' needs at least one address"),
    ("duplicate class", lambda s: tenant0(s).classes.append(ClassConfig(name="game", entity="net")),
     "duplicate class names"),
    ("app", set_class("app", "voip"), "class 'game' has app 'voip', expected one of"),
    ("entity", set_class("entity", "db"), r"class 'game' names unknown entity 'db' \(have \['web-vm', 'net'\]\)"),
    ("mbps", set_class("mbps", -1.0), "class 'game' needs mbps > 0 and flows >= 1"),
    ("flows", set_class("flows", 0), "class 'game' needs mbps > 0 and flows >= 1"),
    ("protocol", set_class("protocol", "sctp"), "class 'game' protocol must be tcp or udp, got 'sctp'"),
    ("match_dscp", set_class("match_dscp", 64), "class 'game' match_dscp must be in 0..63"),
    ("ports", set_class("ports", [0, 443]), r"class 'game' ports must be in 1..65535, got \[0, 443\]"),
    ("max_loss", set_qos("max_loss", 1.5), r"class 'game' max_loss must be in \[0, 1\]"),
    ("app_floor", set_qos("app_floor", -0.1), r"class 'game' app_floor must be in \[0, 1\]"),
    ("max_p99", set_qos("max_p99_ms", 0.0), "class 'game' max_p99_ms must be > 0, got 0.0"),
    ("min_mbps", set_qos("min_mbps", -5.0), "class 'game' min_mbps must be >= 0, got -5.0"),
    ("no paths", set_scenario("paths", []), "scenario needs at least one path"),
    ("dscp_set", set_scenario("dscp_set", [0, 64]), "dscp_set value 64 is outside 0..63"),
    ("rate level", set_scenario("rate_levels", [0.0, 0.5]), "rate_levels, ceil_levels and root_levels must be"),
    ("ceil level", set_scenario("ceil_levels", [1.5]), "rate_levels, ceil_levels and root_levels must be"),
    ("drop level", set_scenario("drop_levels", [0.0, 2.0]), r"drop_levels must be probabilities in \[0, 1\]"),
    ("empty levels", set_scenario("drop_levels", []), r"at least one level: empty \['drop_levels'\]"),
    ("priorities", set_scenario("priority_levels", 0), "priority_levels 0"),
]


@pytest.mark.parametrize(("mutate", "message"), [(m, msg) for _, m, msg in INVALID], ids=[n for n, *_ in INVALID])
def test_invalid_field_raises_a_clear_spec_error(scenario: ScenarioConfig, mutate, message: str):
    mutate(scenario)
    with pytest.raises(SpecError, match=message):
        tenant_spec(scenario, 0)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_scenario_level_errors(scenario: ScenarioConfig):
    assert [s.name for s in scenario_specs(scenario)] == ["acme"]
    scenario.tenants.append(TenantConfig(name="acme", classes=[ClassConfig()]))
    with pytest.raises(SpecError, match=r"duplicate tenant names \['acme', 'acme'\]"):
        scenario_specs(scenario)
    scenario.tenants = []
    with pytest.raises(SpecError, match="scenario 'small' has no tenants"):
        scenario_specs(scenario)
