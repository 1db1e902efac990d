"""Action layout: per traffic class a DSCP mark, rate, ceil, priority, drop probability and path.

An action is a vector of integer choices, ACTION_FIELDS per class in the spec's class order, then
one choice of the tenant's aggregate (root) rate (a gymnasium MultiDiscrete space). Decoding turns
choices into a ShapingPlan: rate, ceil and root are fractions of the tenant's cap picked from the
scenario's levels, ceil is raised to the rate when lower, DSCP comes from the configured set.
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
        """MultiDiscrete sizes of the flat action: classes x fields, then the root rate."""
        per_class = np.tile(np.array(self.per_class, dtype=np.int64), len(self.spec.classes))
        return np.concatenate([per_class, np.array([len(self.spec.root_levels)], dtype=np.int64)])

    def levels(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Lookup tables for decoding."""
        s = self.spec
        return {
            "dscp": torch.tensor(s.dscp_set, dtype=torch.long, device=device),
            "rate": torch.tensor(s.rate_levels, dtype=torch.float32, device=device),
            "ceil": torch.tensor(s.ceil_levels, dtype=torch.float32, device=device),
            "drop": torch.tensor(s.drop_levels, dtype=torch.float32, device=device),
            "root": torch.tensor(s.root_levels, dtype=torch.float32, device=device),
        }

    def decode(self, action: np.ndarray | list[int]) -> ShapingPlan:
        """Decode one flat action into the tenant's ShapingPlan."""
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        if a.shape != self.nvec.shape or (a < 0).any() or (a >= self.nvec).any():
            raise SpecError(f"action {a.tolist()} outside the layout {self.nvec.tolist()}")
        cap = torch.tensor([self.spec.cap_mbps])
        batch = decode_batch(torch.as_tensor(a).view(1, 1, -1), len(self.spec.classes), cap, self.levels())
        return batch.plan(0, 0, self.spec)

    def encode(self, plan: ShapingPlan) -> np.ndarray:
        """Nearest flat action of a plan (used to express static rules as actions)."""
        s = self.spec
        out = []
        for c in plan.classes:
            out += [
                _nearest(s.dscp_set, c.dscp),
                _nearest(s.rate_levels, c.rate_mbps / s.cap_mbps),
                _ceil_index(s.ceil_levels, c.rate_mbps / s.cap_mbps, c.ceil_mbps / s.cap_mbps),
                min(max(c.priority, 0), s.priority_levels - 1),
                _nearest(s.drop_levels, c.drop_prob),
                c.path,
            ]
        out.append(_nearest(s.root_levels, plan.root_mbps / s.cap_mbps))
        return np.array(out, dtype=np.int64)


def _nearest(levels: tuple[float, ...] | tuple[int, ...], value: float) -> int:
    return int(np.argmin([abs(float(v) - value) for v in levels]))


def _ceil_index(levels: tuple[float, ...], rate: float, ceil: float) -> int:
    """Ceil choice of a class: decoding raises a ceil below the rate to the rate, so a plan whose
    ceil equals its rate (no borrowing) is encoded by the highest level at or below the rate; the
    nearest level could be above it and let the class borrow."""
    below = [i for i, v in enumerate(levels) if v <= rate * (1 + 1e-6)]
    if ceil <= rate * (1 + 1e-6) and below:
        return max(below, key=lambda i: levels[i])
    return _nearest(levels, ceil)


def decode_batch(
    actions: torch.Tensor, n_classes: int, cap_mbps: torch.Tensor, levels: dict[str, torch.Tensor]
) -> PlanBatch:
    """Decode flat actions of shape (B, K, n_classes * len(ACTION_FIELDS) + 1) into a PlanBatch.

    Args:
        actions: integer choices per environment and tenant, in the ActionLayout order.
        n_classes: classes per tenant C (the same for the K tenants decoded together).
        cap_mbps: the tenants' caps, shape (K,).
        levels: lookup tables from ActionLayout.levels (the scenario's levels).
    """
    b, k = actions.shape[:2]
    idx = actions[..., :-1].reshape(b, k, n_classes, len(ACTION_FIELDS))
    cap = cap_mbps.view(1, -1, 1)
    root = (levels["root"][actions[..., -1]].unsqueeze(-1) * cap).expand(b, k, n_classes)
    rate = levels["rate"][idx[..., 1]] * cap
    ceil = torch.maximum(levels["ceil"][idx[..., 2]] * cap, rate)
    return PlanBatch(
        rate_mbps=rate,
        ceil_mbps=ceil,
        priority=idx[..., 3],
        dscp=levels["dscp"][idx[..., 0]],
        drop_prob=levels["drop"][idx[..., 4]],
        path=idx[..., 5],
        root_mbps=root,
    )
