"""Action layout: per traffic class a DSCP mark, rate, ceil, priority, drop probability and path.

An action is a vector of integer choices, ACTION_FIELDS per class in the spec's class order
(a gymnasium MultiDiscrete space). Decoding turns choices into a ShapingPlan: rate and ceil are
fractions of the tenant's cap picked from the scenario's levels, ceil is raised to the rate when
lower, DSCP comes from the configured set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shaping.spec.plan import PlanBatch, ShapingPlan
from shaping.spec.tenant import SpecError, TenantSpec

#: The integer choices per class, in order.
ACTION_FIELDS: tuple[str, ...] = ("dscp", "rate", "ceil", "priority", "drop", "path")


@dataclass(frozen=True)
class ActionLayout:
    """The action layout of one tenant."""

    spec: TenantSpec

    @property
    def per_class(self) -> tuple[int, ...]:
        """Number of choices of each field of one class."""
        s = self.spec
        return (
            len(s.dscp_set),
            len(s.rate_levels),
            len(s.ceil_levels),
            s.priority_levels,
            len(s.drop_levels),
            len(s.paths),
        )

    @property
    def nvec(self) -> np.ndarray:
        """MultiDiscrete sizes of the flat action (classes x fields)."""
        return np.tile(np.array(self.per_class, dtype=np.int64), len(self.spec.classes))

    def levels(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Lookup tables for decoding."""
        s = self.spec
        return {
            "dscp": torch.tensor(s.dscp_set, dtype=torch.long, device=device),
            "rate": torch.tensor(s.rate_levels, dtype=torch.float32, device=device),
            "ceil": torch.tensor(s.ceil_levels, dtype=torch.float32, device=device),
            "drop": torch.tensor(s.drop_levels, dtype=torch.float32, device=device),
        }

    def decode(self, action: np.ndarray | list[int]) -> ShapingPlan:
        """Decode one flat action into the tenant's ShapingPlan."""
        a = np.asarray(action, dtype=np.int64).reshape(len(self.spec.classes), len(ACTION_FIELDS))
        if (a < 0).any() or (a >= np.array(self.per_class)).any():
            raise SpecError(f"action {a.tolist()} outside the layout {self.per_class} per class")
        idx = torch.as_tensor(a).view(1, 1, *a.shape)
        cap = torch.tensor([self.spec.cap_mbps])
        batch = decode_batch(idx, cap, self.levels())
        return batch.plan(0, 0, self.spec)

    def encode(self, plan: ShapingPlan) -> np.ndarray:
        """Nearest flat action of a plan (used to express static rules as actions)."""
        s = self.spec
        out = []
        for c in plan.classes:
            out += [
                _nearest(s.dscp_set, c.dscp),
                _nearest(s.rate_levels, c.rate_mbps / s.cap_mbps),
                _nearest(s.ceil_levels, c.ceil_mbps / s.cap_mbps),
                min(max(c.priority, 0), s.priority_levels - 1),
                _nearest(s.drop_levels, c.drop_prob),
                c.path,
            ]
        return np.array(out, dtype=np.int64)


def _nearest(levels: tuple[float, ...] | tuple[int, ...], value: float) -> int:
    return int(np.argmin([abs(float(v) - value) for v in levels]))


def decode_batch(idx: torch.Tensor, cap_mbps: torch.Tensor, levels: dict[str, torch.Tensor]) -> PlanBatch:
    """Decode choices of shape (B, K, C, len(ACTION_FIELDS)) into a PlanBatch.

    Args:
        idx: integer choices per environment, tenant, class and field.
        cap_mbps: the tenants' caps, shape (K,).
        levels: lookup tables from ActionLayout.levels (the scenario's levels).
    """
    cap = cap_mbps.view(1, -1, 1)
    rate = levels["rate"][idx[..., 1]] * cap
    ceil = torch.maximum(levels["ceil"][idx[..., 2]] * cap, rate)
    return PlanBatch(
        rate_mbps=rate,
        ceil_mbps=ceil,
        priority=idx[..., 3],
        dscp=levels["dscp"][idx[..., 0]],
        drop_prob=levels["drop"][idx[..., 4]],
        path=idx[..., 5],
    )
