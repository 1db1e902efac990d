"""The guard: any plan comes out valid and inside the envelope; pinned classes follow the static rules."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.agents import EnvelopeConfig
from shaping.baselines import static_priority_plan
from shaping.control import Guard
from shaping.spec import ClassShaping, ShapingPlan, SpecError, tenant_spec
from tests.control.conftest import small_scenario

SPEC = tenant_spec(small_scenario(), 0)
CFG = EnvelopeConfig(max_drop_prob=0.1, sla_max_drop_prob=0.0, min_rate_share=0.02, sla_rate_margin=1.2,
                     min_root_share=0.3)  # fmt: skip

_class = st.builds(
    ClassShaping,
    rate_mbps=st.floats(-50, 500), ceil_mbps=st.floats(-50, 500), burst_bytes=st.integers(0, 10**6),
    priority=st.integers(-3, 10), dscp=st.integers(-5, 80), drop_prob=st.floats(-1, 2), path=st.integers(-2, 5),
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(classes=st.lists(_class, min_size=3, max_size=3), root=st.floats(-10, 500))
def test_any_plan_is_clamped_into_the_envelope(classes, root):
    guard = Guard(SPEC, CFG)
    out = guard.clamp(ShapingPlan(SPEC.name, tuple(classes), root)).plan
    out.validate(SPEC)
    cap = SPEC.cap_mbps
    assert guard.root_floor() <= out.root_mbps <= cap
    for c, (cs, tc) in enumerate(zip(out.classes, SPEC.classes, strict=True)):
        lo, hi, max_drop = guard.bounds(c)
        assert lo <= cs.rate_mbps <= hi and cs.rate_mbps <= cs.ceil_mbps <= cap
        assert 0 <= cs.drop_prob <= max_drop
        if tc.qos.min_mbps is not None:
            assert cs.rate_mbps >= 1.2 * tc.qos.min_mbps
        if tc.qos.any:
            assert cs.drop_prob == 0.0
    assert guard.clamp(out).changes == ()  # idempotent


def test_plan_inside_is_unchanged_and_changes_are_named():
    guard = Guard(SPEC, CFG)
    rules = static_priority_plan(SPEC)
    inside = replace(rules, classes=tuple(replace(c, rate_mbps=max(c.rate_mbps, 12.0)) for c in rules.classes))
    res = guard.clamp(inside)
    assert res.plan == inside and not res.clamped
    bad = replace(inside, classes=(replace(inside.classes[0], drop_prob=0.5), *inside.classes[1:]))
    res = guard.clamp(bad)
    assert res.changes == ("game.drop: 0.5 -> 0",)
    assert res.plan.classes[0].drop_prob == 0.0


def test_static_entities_follow_the_rules():
    rules = static_priority_plan(SPEC)
    guard = Guard(SPEC, CFG, rules=rules, static_entities=["net"])
    wild = replace(rules, classes=tuple(replace(c, priority=3, dscp=0, ceil_mbps=100.0, rate_mbps=50.0)
                                        for c in rules.classes))  # fmt: skip
    out = guard.clamp(wild).plan
    assert out.classes[1] == rules.classes[1]  # backup is on entity "net"
    assert out.classes[0].priority == 3 and out.classes[2].priority == 3


def test_guard_errors_name_the_problem():
    with pytest.raises(SpecError, match="not entities"):
        Guard(SPEC, rules=static_priority_plan(SPEC), static_entities=["nope"])
    with pytest.raises(SpecError, match="need a rules plan"):
        Guard(SPEC, static_entities=["net"])
    with pytest.raises(SpecError, match="got a plan for"):
        Guard(SPEC).clamp(replace(static_priority_plan(SPEC), tenant="other"))


@pytest.mark.parametrize("field", ["rate_mbps", "ceil_mbps", "drop_prob"])
def test_non_finite_values_are_refused_by_name_not_clamped(field):
    rules = static_priority_plan(SPEC)
    bad = replace(rules, classes=(*rules.classes[:2], replace(rules.classes[2], **{field: float("nan")})))
    with pytest.raises(SpecError, match=rf"class 'site': {field} nan is not finite"):
        Guard(SPEC, CFG).clamp(bad)
    with pytest.raises(SpecError, match="root rate inf is not finite"):
        Guard(SPEC, CFG).clamp(replace(rules, root_mbps=float("inf")))
