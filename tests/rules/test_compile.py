"""Rules compile to a TenantSpec the spec accepts and to the static ShapingPlan, class by class."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shaping.rules import RulesError, compile_rules, tenant_config, validate_rules
from shaping.spec import ActionLayout, ClassShaping, ShapingPlan, burst_bytes, tenant_spec


def test_compile_gives_spec_plan_and_modes(rules, scenario):
    out = compile_rules(rules, scenario)
    assert out.revision == 3
    assert [c.name for c in out.spec.classes] == ["game", "backup", "site"]
    assert out.spec.paths == ("eth0", "eth1")
    assert out.spec.cap_mbps == 100.0
    assert out.spec.classes[0].protocol == "udp" and out.spec.classes[0].ports == (27015,)
    assert out.spec.classes[0].qos.max_p99_ms == 40.0
    assert out.adaptive == (True, False, True)
    assert out.any_adaptive
    assert out.plan == ShapingPlan(
        tenant="acme",
        root_mbps=100.0,
        classes=(
            ClassShaping(10.0, 20.0, burst_bytes(10.0), 0, 46, 0.0, 0),
            ClassShaping(20.0, 100.0, burst_bytes(20.0), 3, 0, 0.01, 1),
            ClassShaping(30.0, 80.0, burst_bytes(30.0), 1, 18, 0.0, 0),
        ),
    )
    out.plan.validate(out.spec)
    # The same spec as the scenario path: an agent trained on tenant_config(rules) fits this tenant.
    same = tenant_spec(replace(scenario, tenants=[tenant_config(rules)]), 0)
    assert same.fingerprint() == out.spec.fingerprint()
    assert len(ActionLayout(out.spec).nvec) == 3 * 6 + 1


def test_destinations_reach_the_spec_normalized(rules, scenario):
    game = replace(rules.classes[0], match=replace(rules.classes[0].match, dst_cidrs=("192.0.2.7", "198.51.100.9/24")))
    out = compile_rules(replace(rules, classes=(game, *rules.classes[1:])), scenario)
    assert out.spec.classes[0].dst_cidrs == ("192.0.2.7/32", "198.51.100.0/24")
    assert out.spec.classes[1].dst_cidrs == ()
    # Classification only: the layouts (and so checkpoints) do not depend on destinations.
    assert out.spec.fingerprint() == compile_rules(rules, scenario).spec.fingerprint()


def test_explicit_burst_is_kept(rules, scenario):
    game = replace(rules.classes[0], action=replace(rules.classes[0].action, burst_bytes=50_000))
    out = compile_rules(replace(rules, classes=(game, *rules.classes[1:])), scenario)
    assert out.plan.classes[0].burst_bytes == 50_000


def test_empty_and_entity_only_rule_sets_are_valid_but_not_compilable(rules, scenario):
    validate_rules(replace(rules, entities=(), classes=()), scenario)
    validate_rules(replace(rules, classes=()), scenario)
    with pytest.raises(RulesError, match="no traffic classes yet"):
        compile_rules(replace(rules, classes=()), scenario)


def test_entity_only_rule_set_still_checks_entities(rules, scenario):
    bad = replace(rules.entities[0], kind="router")
    with pytest.raises(RulesError, match="kind 'router'"):
        validate_rules(replace(rules, entities=(bad,), classes=()), scenario)


def test_the_compiled_scenario_is_the_provider_s_with_the_tenant_alone(rules, scenario):
    compiled = compile_rules(rules, replace(scenario, tenants=[tenant_config(replace(rules, tenant="other"))]))
    assert compiled.scenario.paths == scenario.paths
    assert compiled.scenario.tenants == [tenant_config(rules)]
    assert tenant_spec(compiled.scenario, "acme") == compiled.spec  # what the gate's twin simulates
