"""ShapingPlan.validate: a plan that does not fit the spec, or carries a non-finite number, is refused."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from shaping.baselines import static_priority_plan
from shaping.spec import SpecError, TenantSpec


@pytest.mark.parametrize("field", ["rate_mbps", "ceil_mbps", "drop_prob"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_class_values_are_refused(spec: TenantSpec, field: str, value: float):
    plan = static_priority_plan(spec)
    bad = replace(plan, classes=(replace(plan.classes[0], **{field: value}), *plan.classes[1:]))
    with pytest.raises(SpecError, match=rf"class 'game': {field.split('_')[0]}.* not finite"):
        bad.validate(spec)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_root_is_refused(spec: TenantSpec, value: float):
    with pytest.raises(SpecError, match=r"root rate .* not finite"):
        replace(static_priority_plan(spec), root_mbps=value).validate(spec)


def test_a_valid_plan_passes(spec: TenantSpec):
    static_priority_plan(spec).validate(spec)
