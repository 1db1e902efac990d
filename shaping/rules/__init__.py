"""The rules model of a tenant: entities, traffic classes, static actions, modes, QoS; validation and compilation."""

from shaping.rules.compile import CompiledRules, compile_rules, tenant_config, validate_rules
from shaping.rules.model import MODES, PROTOCOLS, ClassRule, EntityRule, Limits, Match, RuleSet, StaticAction
from shaping.rules.validate import RulesError, check_name

__all__ = [
    "MODES",
    "PROTOCOLS",
    "ClassRule",
    "CompiledRules",
    "EntityRule",
    "Limits",
    "Match",
    "RuleSet",
    "RulesError",
    "StaticAction",
    "check_name",
    "compile_rules",
    "tenant_config",
    "validate_rules",
]
