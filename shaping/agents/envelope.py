"""Safety envelope: which MultiDiscrete choices an agent may take, from the tenant's spec and QoS.

The envelope is one boolean mask per action dimension (per class: dscp, rate, ceil, priority, drop,
path; then the root rate), built from static bounds so it factors over the dimensions. Policies add
``-inf`` to the logits of forbidden choices (``mask_logits``), so neither sampling during
exploration nor the greedy action ever leaves the envelope. Rules:

- rate: every class within [min_rate_share, max_rate_share] of the cap; a class with a minimum
  throughput SLA at least ``sla_rate_margin * min_mbps``;
- drop: every class at most ``max_drop_prob``; a class with any SLA at most ``sla_max_drop_prob``
  and, with a loss SLA, at most its ``max_loss``;
- root: at least ``min_root_share`` of the cap and at least the sum of the SLA minimum rates;
- dscp, ceil, priority, path: unrestricted. Decoding already raises a ceil below the rate to the
  rate (ActionLayout), and a ceil level below the rate is how an action says "no borrowing", so
  masking ceil levels below the rate would only remove plans.

When no level of a dimension satisfies its bounds (an SLA above the cap, say), the level nearest to
the bounds is kept, so the policy still has a choice, and the relaxation is listed in ``relaxed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from shaping.spec import ACTION_FIELDS, ActionLayout, TenantSpec

_RATE = ACTION_FIELDS.index("rate")
_DROP = ACTION_FIELDS.index("drop")
#: Relative tolerance of the level comparisons (levels are floats from YAML).
_TOL = 1e-9


@dataclass(frozen=True)
class EnvelopeConfig:
    """Bounds of the safety envelope (shares are fractions of the tenant's cap)."""

    max_drop_prob: float = 0.1
    """Largest drop probability of any class."""
    sla_max_drop_prob: float = 0.0
    """Largest drop probability of a class with any SLA."""
    min_rate_share: float = 0.0
    """Smallest guaranteed rate of any class."""
    max_rate_share: float = 1.0
    """Largest guaranteed rate of any class."""
    sla_rate_margin: float = 1.0
    """A class with a minimum throughput SLA gets at least this multiple of its min_mbps."""
    min_root_share: float = 0.0
    """Smallest aggregate (root) rate."""

    def __post_init__(self) -> None:
        if self.max_drop_prob < 0 or self.sla_max_drop_prob < 0 or self.sla_rate_margin < 0:
            raise ValueError("envelope drop bounds and sla_rate_margin must be >= 0")
        if not 0 <= self.min_rate_share <= self.max_rate_share:
            raise ValueError(
                f"envelope needs 0 <= min_rate_share <= max_rate_share, got {self.min_rate_share}, "
                f"{self.max_rate_share}"
            )


@dataclass(frozen=True)
class Envelope:
    """Allowed choices of each action dimension; every dimension keeps at least one."""

    masks: tuple[tuple[bool, ...], ...]
    """Per action dimension, per choice: whether the choice is inside the envelope."""
    relaxed: tuple[str, ...] = ()
    """Bounds no level could satisfy, where the nearest level was kept instead."""

    def __post_init__(self) -> None:
        empty = [i for i, m in enumerate(self.masks) if not any(m)]
        if not self.masks or empty:
            raise ValueError(f"envelope leaves no choice in action dimensions {empty}")

    @classmethod
    def allow_all(cls, nvec: Iterable[int]) -> Envelope:
        """The envelope that allows every choice of a MultiDiscrete(nvec)."""
        return cls(tuple((True,) * int(n) for n in nvec))

    @property
    def nvec(self) -> tuple[int, ...]:
        """Number of choices of each dimension."""
        return tuple(len(m) for m in self.masks)

    def padded(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(D, max choices) bool mask; padding beyond a dimension's choices is False."""
        width = max(self.nvec)
        return torch.tensor([list(m) + [False] * (width - len(m)) for m in self.masks], device=device)

    def flat(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(sum(nvec),) bool mask over the concatenated choices of every dimension."""
        return torch.tensor([x for m in self.masks for x in m], device=device)

    def contains(self, actions: torch.Tensor) -> torch.Tensor:
        """(...,) bool: each action of shape (..., D) is valid for nvec and inside the envelope."""
        nvec = torch.tensor(self.nvec, device=actions.device)
        in_range = ((actions >= 0) & (actions < nvec)).all(-1)
        allowed = self.padded(actions.device)
        dims = torch.arange(len(self.masks), device=actions.device)
        inside = allowed[dims, actions.clamp(min=0).minimum(nvec - 1)].all(-1)
        return in_range & inside


def pad_index(nvec: Iterable[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Index of a (D, max choices) padded layout into concatenated per-dimension logits.

    Returns:
        index: (D, M) long, position in the concatenated logits (0 at padding).
        real: (D, M) bool, the position is a real choice (not padding).
    """
    sizes = torch.tensor([int(n) for n in nvec], device=device)
    offsets = torch.cumsum(sizes, 0) - sizes
    cols = torch.arange(int(sizes.max()), device=device)
    real = cols < sizes[:, None]
    index = torch.where(real, offsets[:, None] + cols, torch.zeros_like(cols))
    return index, real


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits with forbidden choices set to -inf (allowed broadcasts against logits)."""
    return logits.masked_fill(~allowed, float("-inf"))


def random_actions(
    envelope: Envelope, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n, D) actions drawn uniformly from the allowed choices of each dimension (exploration)."""
    allowed = envelope.padded(device)
    u = torch.rand((n, *allowed.shape), device=device, generator=generator)
    return mask_logits(u, allowed).argmax(-1)


def _within(levels: Sequence[float], lo: float, hi: float, what: str, relaxed: list[str]) -> tuple[bool, ...]:
    """Mask of levels in [lo, hi]; the level nearest to the interval when none is."""
    ok = tuple(lo * (1 - _TOL) - _TOL <= v <= hi * (1 + _TOL) + _TOL for v in levels)
    if any(ok):
        return ok
    dist = [max(lo - v, v - hi, 0.0) for v in levels]
    keep = dist.index(min(dist))
    relaxed.append(f"{what}: no level in [{lo:.4g}, {hi:.4g}] among {list(levels)}; kept {levels[keep]}")
    return tuple(i == keep for i in range(len(levels)))


def build_envelope(spec: TenantSpec, config: EnvelopeConfig | None = None) -> Envelope:
    """The safety envelope of a tenant from its spec (levels, classes and their QoS).

    Args:
        spec: the tenant's spec; its classes' QoS requirements set the SLA bounds.
        config: the bounds; defaults from EnvelopeConfig.
    """
    cfg = config or EnvelopeConfig()
    cap = spec.cap_mbps
    masks = [(True,) * int(n) for n in ActionLayout(spec).nvec]
    relaxed: list[str] = []
    for c, tc in enumerate(spec.classes):
        base = c * len(ACTION_FIELDS)
        q = tc.qos
        lo = cfg.min_rate_share
        if q.min_mbps is not None:
            lo = max(lo, cfg.sla_rate_margin * q.min_mbps / cap)
        masks[base + _RATE] = _within(spec.rate_levels, lo, cfg.max_rate_share, f"{tc.name}.rate", relaxed)
        max_drop = cfg.max_drop_prob
        if q.any:
            max_drop = min(max_drop, cfg.sla_max_drop_prob)
        if q.max_loss is not None:
            max_drop = min(max_drop, q.max_loss)
        masks[base + _DROP] = _within(spec.drop_levels, 0.0, max_drop, f"{tc.name}.drop", relaxed)
    sla_total = sum(cfg.sla_rate_margin * (tc.qos.min_mbps or 0.0) for tc in spec.classes) / cap
    masks[-1] = _within(spec.root_levels, max(cfg.min_root_share, sla_total), 1.0, "root", relaxed)
    return Envelope(tuple(masks), tuple(relaxed))
