"""The one definition of tenants, observations, actions, plans and reward, shared by every part."""

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

#: Bumped whenever the observation, action or reward definition changes meaning (the observation's own
#: layout version is part of it).
SPEC_VERSION = f"{LAYOUT_VERSION}"

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
