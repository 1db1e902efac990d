"""Range checks of configuration values, shared by the core's and the experiments' config dataclasses.

Each raises ValueError naming ``section.field`` and the value, so an entry point can print it as a
one-line error. Comparisons are written ``not value >= bound`` so that nan fails them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    """The allowed range of one numeric setting; None leaves that side open."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    """Whether lo itself is refused (``> lo`` rather than ``>= lo``)."""
    hi_open: bool = False
    """Whether hi itself is refused (``< hi`` rather than ``<= hi``)."""

    def holds(self, value: float) -> bool:
        """Whether value is in range (nan never is)."""
        if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
            return False
        return self.hi is None or bool(value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        """The range as the error messages state it: ``>= 1``, ``> 0``, ``in [0, 0.5)``."""
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"

    def check(self, key: str, value: float | None) -> None:
        """Raise ValueError naming key and value where value (None skipped) is out of range."""
        if value is not None and not self.holds(value):
            raise ValueError(f"{key} must be {self.describe()}, got {value}")


def at_least(section: str, obj: object, minimum: float, *names: str) -> None:
    """Each named field (None skipped) must be >= minimum."""
    for name in names:
        Bound(minimum).check(f"{section}.{name}", getattr(obj, name))


def above(section: str, obj: object, minimum: float, *names: str) -> None:
    """Each named field (None skipped) must be > minimum."""
    for name in names:
        Bound(minimum, lo_open=True).check(f"{section}.{name}", getattr(obj, name))


def within(section: str, obj: object, lo: float, hi: float, *names: str) -> None:
    """Each named field (None skipped) must be in [lo, hi]."""
    for name in names:
        Bound(lo, hi).check(f"{section}.{name}", getattr(obj, name))


def check_tree(obj: Any, prefix: str = "") -> None:
    """Refuse, anywhere in a config tree (dataclasses, lists, dicts), a nan or infinite float and a negative seed.

    Seeds (fields named ``seed`` or ending in ``_seed``) seed numpy's and torch's generators, which
    refuse or wrap negative values; nan and infinity are never a meaningful setting.
    """
    if is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if (f.name == "seed" or f.name.endswith("_seed")) and isinstance(value, int) and value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
            check_tree(value, f"{key}.")
    elif isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            check_tree(item, f"{prefix}{i}.")
    elif isinstance(obj, dict):
        for k, item in obj.items():
            check_tree(item, f"{prefix}{k}.")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{prefix.rstrip('.')} must be finite, got {obj}")


def one_line(err: BaseException) -> str:
    """An error's message on one line (OmegaConf's and a checkpoint mismatch's span several)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__


def check_privacy(
    mode: str,
    noise_multiplier: float,
    clipping_norm: float,
    delta: float,
    target_epsilon: float | None,
    dpsgd_noise: float,
    dpsgd_max_grad_norm: float,
) -> None:
    """The privacy settings' ranges, named by their run-config keys (the Hydra schema and the Flower apps alike).

    Raises:
        ValueError: the first value out of range; client-level DP (central, distributed) without noise
            among them, whose accountant would report an infinite epsilon.
    """
    if not noise_multiplier >= 0:
        raise ValueError(f"privacy.noise_multiplier must be >= 0, got {noise_multiplier}")
    if mode in ("central", "distributed") and not noise_multiplier > 0:
        raise ValueError(f"privacy.mode={mode} needs noise_multiplier > 0 (its epsilon would be infinite), "
                         f"got {noise_multiplier}")  # fmt: skip
    if not clipping_norm > 0 or not 0 < delta < 1:
        raise ValueError(f"privacy needs clipping_norm > 0 and 0 < delta < 1, got {clipping_norm}, {delta}")
    if target_epsilon is not None and not 0 < target_epsilon < math.inf:
        raise ValueError(f"privacy.target_epsilon must be > 0 (null: no budget), got {target_epsilon}")
    if not dpsgd_noise >= 0 or not dpsgd_max_grad_norm > 0:
        raise ValueError(f"privacy needs dpsgd_noise_multiplier >= 0 and dpsgd_max_grad_norm > 0, got "
                         f"{dpsgd_noise}, {dpsgd_max_grad_norm}")  # fmt: skip
