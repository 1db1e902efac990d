"""The one definition of tenants, observations, actions, plans and reward, shared by every part."""

from shaping.spec.action import ACTION_FIELDS, ActionLayout, decode_batch
from shaping.spec.metrics import ClassMetrics, HostMetrics
from shaping.spec.observation import ObservationLayout
from shaping.spec.plan import ClassShaping, PlanBatch, ShapingPlan, burst_bytes, stack_plans
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

#: Bumped whenever the observation, action or reward definition changes meaning.
SPEC_VERSION = "1"

__all__ = [
    "ACTION_FIELDS",
    "SPEC_VERSION",
    "ActionLayout",
    "ClassMetrics",
    "ClassShaping",
    "Entity",
    "HostMetrics",
    "ObservationLayout",
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
    "qos_tensors",
    "scenario_specs",
    "sla_violations",
    "stack_plans",
    "tenant_spec",
]
