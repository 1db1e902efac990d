"""The rules model of a tenant: entities, traffic classes, static actions, modes, QoS; validation and compilation.

Compilation is imported on first use (PEP 562): it builds plans, which need torch, and the `fedshape` CLI
reads and writes rules without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shaping.rules.model import MODES, PROTOCOLS, ClassRule, EntityRule, Limits, Match, RuleSet, StaticAction
from shaping.rules.validate import RulesError, check_name

if TYPE_CHECKING:
    from shaping.rules.compile import CompiledRules, compile_rules, tenant_config, validate_rules

_COMPILE = ("CompiledRules", "compile_rules", "tenant_config", "validate_rules")


def __getattr__(name: str) -> Any:
    if name not in _COMPILE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("shaping.rules.compile"), name)
    globals()[name] = value
    return value


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
