"""Action layout: per traffic class a DSCP mark, rate, ceil, priority, drop probability and path.

An action is a vector of integer choices, ACTION_FIELDS per class in the spec's class order, then
one choice of the tenant's aggregate (root) rate (a gymnasium MultiDiscrete space). Decoding turns
choices into a ShapingPlan: rate, ceil and root are fractions of the tenant's cap picked from the
scenario's levels, ceil is raised to the rate when lower, DSCP comes from the configured set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from shaping.spec.plan import ClassShaping, PlanBatch, ShapingPlan, burst_bytes
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
        """MultiDiscrete sizes of the flat action: classes x fields, then the root rate (a fresh copy)."""
        return self._nvec.copy()

    @cached_property
    def _nvec(self) -> np.ndarray:
        # cached_property writes the instance __dict__ directly, so it works on this frozen dataclass.
        per_class = np.tile(np.array(self.per_class, dtype=np.int64), len(self.spec.classes))
        return np.concatenate([per_class, np.array([len(self.spec.root_levels)], dtype=np.int64)])

    @cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        """decode's lookup tables: levels() in numpy, the scaled ones already multiplied by the cap in float32
        (the dtype decode_batch computes in, so one product per choice gives bit-identical plans)."""
        s = self.spec
        cap = np.float32(s.cap_mbps)
        return {
            "dscp": np.array(s.dscp_set, dtype=np.int64),
            "rate": np.array(s.rate_levels, dtype=np.float32) * cap,
            "ceil": np.array(s.ceil_levels, dtype=np.float32) * cap,
            "drop": np.array(s.drop_levels, dtype=np.float32),
            "root": np.array(s.root_levels, dtype=np.float32) * cap,
        }

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
        """Decode one flat action into the tenant's ShapingPlan (the same plan as ``decode_batch``).

        One action is decoded in numpy from cached tables: the torch path costs ~0.5 ms per call on a
        one-element batch, which a control loop pays every interval."""
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        nvec = self._nvec
        if a.shape != nvec.shape or (a < 0).any() or (a >= nvec).any():
            raise SpecError(f"action {a.tolist()} outside the layout {nvec.tolist()}")
        t = self._tables
        idx = a[:-1].reshape(len(self.spec.classes), len(ACTION_FIELDS))
        rate = t["rate"][idx[:, 1]]
        ceil = np.maximum(t["ceil"][idx[:, 2]], rate)
        cols = (
            rate.tolist(), ceil.tolist(), idx[:, 3].tolist(), t["dscp"][idx[:, 0]].tolist(),
            t["drop"][idx[:, 4]].tolist(), idx[:, 5].tolist(),
        )  # fmt: skip
        return ShapingPlan(
            tenant=self.spec.name,
            root_mbps=float(t["root"][a[-1]]),
            classes=tuple(
                ClassShaping(
                    rate_mbps=r, ceil_mbps=c, burst_bytes=burst_bytes(r), priority=p, dscp=d, drop_prob=x, path=pa
                )
                for r, c, p, d, x, pa in zip(*cols, strict=True)
            ),
        )

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

    def encode_batch(self, plan: PlanBatch) -> torch.Tensor:
        """``encode`` of one tenant's plans in B environments at once: fields (B, C) with C >= the spec's
        classes (the first ones are the tenant's), root_mbps repeated over the classes; returns (B, D) int64.
        A teacher whose plan changes every step (a feedback controller) is encoded this way."""
        s = self.spec
        n, dev = len(s.classes), plan.rate_mbps.device

        def nearest(levels: tuple[float, ...] | tuple[int, ...], value: torch.Tensor) -> torch.Tensor:
            table = torch.tensor(levels, dtype=torch.float64, device=dev)
            return (value.double().unsqueeze(-1) - table).abs().argmin(-1)  # first of equals, as _nearest

        rate = plan.rate_mbps[:, :n].double() / s.cap_mbps
        ceil = plan.ceil_mbps[:, :n].double() / s.cap_mbps
        ceil_levels = torch.tensor(s.ceil_levels, dtype=torch.float64, device=dev)
        # _ceil_index: a ceil at the rate (no borrowing) takes the highest level at or below the rate.
        below = ceil_levels <= rate.unsqueeze(-1) * (1 + 1e-6)  # (B, n, L)
        highest_below = torch.where(below, ceil_levels, torch.full_like(ceil_levels, -1.0)).argmax(-1)
        no_borrow = (ceil <= rate * (1 + 1e-6)) & below.any(-1)
        fields = [
            nearest(s.dscp_set, plan.dscp[:, :n]),
            nearest(s.rate_levels, rate),
            torch.where(no_borrow, highest_below, nearest(s.ceil_levels, ceil)),
            plan.priority[:, :n].clamp(0, s.priority_levels - 1),
            nearest(s.drop_levels, plan.drop_prob[:, :n]),
            plan.path[:, :n],
        ]
        per_class = torch.stack([f.long() for f in fields], dim=-1).reshape(plan.rate_mbps.shape[0], -1)
        root = nearest(s.root_levels, plan.root_mbps[:, 0].double() / s.cap_mbps)
        return torch.cat([per_class, root.unsqueeze(-1)], dim=-1)


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
