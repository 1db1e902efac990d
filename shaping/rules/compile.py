"""Compile a tenant's rules into its TenantSpec, its static ShapingPlan and the mode of each class."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from shaping.config import ClassConfig, EntityConfig, QoSConfig, ScenarioConfig, TenantConfig
from shaping.rules.model import ClassRule, Limits, RuleSet
from shaping.rules.validate import RulesError, check_overlaps, check_structure
from shaping.spec.plan import ClassShaping, ShapingPlan, burst_bytes
from shaping.spec.tenant import SpecError, TenantSpec, tenant_spec


@dataclass(frozen=True)
class CompiledRules:
    """What the tenant agent needs from the rules, in the spec's class order."""

    revision: int
    spec: TenantSpec
    plan: ShapingPlan
    """The static plan: enforced for static classes and as the fallback of adaptive ones."""
    adaptive: tuple[bool, ...]
    """Per class: whether its entity is in Adaptive Shaping mode."""
    scenario: ScenarioConfig = field(compare=False, repr=False)
    """The provider's scenario with this tenant, as its rules describe it, alone in it: what the simulator (the
    safety gate's twin) runs for the tenant."""

    @property
    def any_adaptive(self) -> bool:
        """Whether the agent shapes at least one class."""
        return any(self.adaptive)


def tenant_config(rules: RuleSet) -> TenantConfig:
    """The rules as the scenario config of one tenant (what the simulator and the spec read)."""
    return TenantConfig(
        name=rules.tenant,
        cap_mbps=rules.cap_mbps,
        entities=[
            EntityConfig(name=e.name, kind=e.kind, cidrs=list(e.cidrs), vcpus=e.vcpus, memory_gib=e.memory_gib)
            for e in rules.entities
        ],
        classes=[_class_config(c) for c in rules.classes],
    )


def _class_config(c: ClassRule) -> ClassConfig:
    return ClassConfig(
        name=c.name, app=c.app, entity=c.entity, mbps=c.mbps, flows=c.flows, protocol=c.match.protocol,
        ports=list(c.match.ports), dst_cidrs=list(c.match.dst_cidrs), match_dscp=c.match.dscp,
        qos=QoSConfig(**dataclasses.asdict(c.qos)),
    )


def _spec(rules: RuleSet, scenario: ScenarioConfig) -> TenantSpec:
    cfg = tenant_config(rules)
    if not cfg.classes and cfg.entities:
        # The spec's checks need a class; a placeholder on the first entity lets entity-only rule sets reuse them.
        cfg.classes = [ClassConfig(name="placeholder", entity=cfg.entities[0].name)]
    try:
        return tenant_spec(dataclasses.replace(scenario, tenants=[cfg]), 0)
    except SpecError as err:
        raise RulesError(str(err)) from None


def validate_rules(rules: RuleSet, scenario: ScenarioConfig, limits: Limits | None = None) -> None:
    """Raise RulesError (a SpecError) when the rules cannot be stored; an empty rule set is valid."""
    limits = limits or Limits()
    check_structure(rules, limits, scenario.paths)
    if not rules.entities:
        if rules.classes:
            raise RulesError(f"class {rules.classes[0].name!r} names entity {rules.classes[0].entity!r}, but the"
                             " tenant has no entities")
        return
    spec = _spec(rules, scenario)
    check_overlaps(rules)
    if rules.classes:
        try:
            _static_plan(rules, spec, scenario).validate(spec)
        except SpecError as err:
            raise RulesError(f"static action: {err}") from None


def _static_plan(rules: RuleSet, spec: TenantSpec, scenario: ScenarioConfig) -> ShapingPlan:
    paths = [p.name for p in scenario.paths]
    return ShapingPlan(
        tenant=rules.tenant,
        root_mbps=rules.cap_mbps,
        classes=tuple(
            ClassShaping(
                rate_mbps=c.action.rate_mbps,
                ceil_mbps=c.action.ceil_mbps,
                burst_bytes=c.action.burst_bytes or burst_bytes(c.action.rate_mbps),
                priority=c.action.priority,
                dscp=c.action.dscp,
                drop_prob=c.action.drop_prob,
                path=paths.index(c.action.path) if c.action.path else 0,
            )
            for c in rules.classes
        ),
    )


def compile_rules(rules: RuleSet, scenario: ScenarioConfig, limits: Limits | None = None) -> CompiledRules:
    """Validate the rules and compile them.

    Args:
        rules: the tenant's rules (at least one entity and one class).
        scenario: provider paths and the agent's action levels; its tenants are ignored.
        limits: bounds on counts and names.
    Raises:
        RulesError: with a message naming the offending field.
    """
    validate_rules(rules, scenario, limits)
    if not rules.classes:
        raise RulesError(f"tenant {rules.tenant!r} has no traffic classes yet: nothing to shape")
    spec = _spec(rules, scenario)
    plan = _static_plan(rules, spec, scenario)
    modes = {e.name: e.mode for e in rules.entities}
    return CompiledRules(
        revision=rules.revision,
        spec=spec,
        plan=plan,
        adaptive=tuple(modes[c.entity] == "adaptive" for c in rules.classes),
        scenario=dataclasses.replace(scenario, tenants=[tenant_config(rules)]),
    )
