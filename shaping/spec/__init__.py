"""The one definition of tenants, observations, actions, plans and reward, shared by every part.

Every name is imported from its module on first use (PEP 562): most of them need torch, which takes
seconds to import, and the `fedshape` CLI and the rules service need only `shaping.spec.tenant`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shaping.spec.action import ACTION_FIELDS, ActionLayout, decode_batch
    from shaping.spec.metrics import ClassMetrics, HostMetrics, PathMetrics, paths_from_classes
    from shaping.spec.observation import LAYOUT_VERSION, ObservationLayout
    from shaping.spec.plan import (
        ClassShaping,
        PlanBatch,
        ShapingPlan,
        burst_bytes,
        empty_plan,
        plan_tensors,
        stack_plans,
    )
    from shaping.spec.reward import QoSTensors, RewardTerms, compute_reward, qos_tensors, sla_violations
    from shaping.spec.tenant import (
        Entity,
        QoSRequirement,
        SpecError,
        TenantSpec,
        TrafficClass,
        controlled_indices,
        scenario_specs,
        tenant_spec,
    )

    SPEC_VERSION: str

#: Where each public name lives (module of shaping.spec).
_WHERE = {
    "ACTION_FIELDS": "action",
    "ActionLayout": "action",
    "decode_batch": "action",
    "ClassMetrics": "metrics",
    "HostMetrics": "metrics",
    "PathMetrics": "metrics",
    "paths_from_classes": "metrics",
    "LAYOUT_VERSION": "observation",
    "ObservationLayout": "observation",
    "ClassShaping": "plan",
    "PlanBatch": "plan",
    "ShapingPlan": "plan",
    "burst_bytes": "plan",
    "empty_plan": "plan",
    "plan_tensors": "plan",
    "stack_plans": "plan",
    "QoSTensors": "reward",
    "RewardTerms": "reward",
    "compute_reward": "reward",
    "qos_tensors": "reward",
    "sla_violations": "reward",
    "Entity": "tenant",
    "QoSRequirement": "tenant",
    "SpecError": "tenant",
    "TenantSpec": "tenant",
    "TrafficClass": "tenant",
    "controlled_indices": "tenant",
    "scenario_specs": "tenant",
    "tenant_spec": "tenant",
}


def __getattr__(name: str) -> Any:
    if name == "SPEC_VERSION":
        # Bumped whenever the observation, action or reward definition changes meaning (the observation's own
        # layout version is part of it).
        value: Any = f"{__getattr__('LAYOUT_VERSION')}"
    elif name in _WHERE:
        value = getattr(importlib.import_module(f"shaping.spec.{_WHERE[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups find it without coming here
    return value


__all__ = [
    "ACTION_FIELDS",
    "LAYOUT_VERSION",
    "SPEC_VERSION",
    "ActionLayout",
    "ClassMetrics",
    "ClassShaping",
    "Entity",
    "HostMetrics",
    "ObservationLayout",
    "PathMetrics",
    "PlanBatch",
    "QoSRequirement",
    "QoSTensors",
    "RewardTerms",
    "ShapingPlan",
    "SpecError",
    "TenantSpec",
    "TrafficClass",
    "burst_bytes",
    "compute_reward",
    "controlled_indices",
    "decode_batch",
    "empty_plan",
    "paths_from_classes",
    "plan_tensors",
    "qos_tensors",
    "scenario_specs",
    "sla_violations",
    "stack_plans",
    "tenant_spec",
]
