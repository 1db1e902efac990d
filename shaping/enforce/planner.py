"""The pure planner: a ShapingPlan, the tenant's spec and target, and the current kernel state -> operations."""

from __future__ import annotations

from collections.abc import Sequence

from shaping.enforce.kinds import KINDS
from shaping.enforce.ops import KernelState, Operation
from shaping.enforce.target import EnforceTarget
from shaping.spec.plan import ShapingPlan
from shaping.spec.tenant import SpecError, TenantSpec


def _kinds(kinds: Sequence[str] | None) -> list[str]:
    names = list(KINDS) if kinds is None else [k for k in KINDS if k in kinds]
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown operation kinds {sorted(unknown)}; have {list(KINDS)}")
    return names


def plan_operations(
    spec: TenantSpec,
    plan: ShapingPlan,
    target: EnforceTarget,
    current: KernelState | None = None,
    kinds: Sequence[str] | None = None,
) -> list[Operation]:
    """Operations that turn ``current`` into the state ``plan`` needs; none when it is already there.

    Args:
        spec: the tenant (classes, entities' addresses, paths).
        plan: the desired shaping; validated against the spec first.
        target: where it is enforced (interfaces, tables, marks).
        current: FedShape's objects as they are now (``backend.read_state()``); None: nothing yet.
        kinds: the operation kinds to plan (``Capabilities.kinds``); None: all.
    Raises:
        SpecError: when the plan does not fit the spec or the target has another number of paths.
    """
    plan.validate(spec)
    if len(target.paths) != len(spec.paths):
        raise SpecError(f"target has {len(target.paths)} paths, tenant {spec.name!r} has {len(spec.paths)}")
    current = current if current is not None else KernelState()
    return [op for name in _kinds(kinds) for op in KINDS[name].plan(spec, plan, target, current)]


def teardown_operations(
    target: EnforceTarget, current: KernelState, kinds: Sequence[str] | None = None
) -> list[Operation]:
    """Operations that remove everything of FedShape's in ``current``, in reverse apply order."""
    return [op for name in reversed(_kinds(kinds)) for op in KINDS[name].teardown(target, current)]
