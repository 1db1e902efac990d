"""Kernel enforcement of ShapingPlans: a pure planner of typed operations and backends that apply them.

Typical use (a tenant agent)::

    target = target_from_spec(spec, EnforceConfig(interfaces=("eth0", "eth1"), netns="tenant-a"))
    with KernelEnforcer(spec, target) as enforcer:
        enforcer.apply(plan)          # idempotent, incremental; reconciles with the kernel on first use
        ...
        enforcer.teardown()           # leaves nothing behind
"""

from __future__ import annotations

from shaping.enforce.backends import Backend, NetlinkBackend, RecordingBackend
from shaping.enforce.capabilities import Capabilities, probe_capabilities
from shaping.enforce.enforcer import ApplyResult, KernelEnforcer
from shaping.enforce.fast_stats import ClassStats, FastStats, LinkStats
from shaping.enforce.fastpath import FastPathError, HtbFastPath
from shaping.enforce.kinds import KINDS, HtbClass, HtbQdisc, NftChain, NftRule, NftTable, PolicyRule, TableRoute
from shaping.enforce.nftcli import NftCli, NftError, NftNotFound
from shaping.enforce.ops import (
    HtbClassState,
    HtbQdiscState,
    KernelState,
    NftRuleState,
    Operation,
    PolicyRuleState,
    RouteState,
)
from shaping.enforce.planner import plan_operations, teardown_operations
from shaping.enforce.target import EnforceConfig, EnforceTarget, PathRoute, target_from_spec

__all__ = [
    "KINDS",
    "ApplyResult",
    "Backend",
    "Capabilities",
    "ClassStats",
    "EnforceConfig",
    "EnforceTarget",
    "FastPathError",
    "FastStats",
    "HtbClass",
    "HtbClassState",
    "HtbFastPath",
    "HtbQdisc",
    "HtbQdiscState",
    "KernelEnforcer",
    "KernelState",
    "LinkStats",
    "NetlinkBackend",
    "NftChain",
    "NftCli",
    "NftError",
    "NftNotFound",
    "NftRule",
    "NftRuleState",
    "NftTable",
    "Operation",
    "PathRoute",
    "PolicyRule",
    "PolicyRuleState",
    "RecordingBackend",
    "RouteState",
    "TableRoute",
    "plan_operations",
    "probe_capabilities",
    "target_from_spec",
    "teardown_operations",
]
