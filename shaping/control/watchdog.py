"""Watchdog: decides each interval whether the tenant runs adaptive (the policy) or its static rules.

It falls back at once, in the interval where it happens, when the policy raised, missed its
deadline (a stall), or the SLA violation rate over a sliding window of adaptive intervals exceeds
a threshold; it returns to adaptive after ``recover_intervals`` consecutive healthy intervals (the
policy keeps being called in shadow while the fallback is applied, so its health stays known).
It is a pure state machine over what the loop reports; PolicyRunner enforces the deadline.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class Mode(enum.Enum):
    """Which plan the loop applies."""

    ADAPTIVE = "adaptive"
    FALLBACK = "fallback"


class Outcome(enum.Enum):
    """What happened to the policy call of one interval."""

    OK = "ok"
    ERROR = "error"
    STALL = "stall"


@dataclass(frozen=True)
class WatchdogConfig:
    """Thresholds of the watchdog."""

    deadline_fraction: float = 0.5
    """Policy deadline as a fraction of the control interval (the rest is left to guard and apply)."""
    sla_window: int = 20
    """Adaptive intervals over which the SLA violation rate is measured."""
    sla_threshold: float = 0.5
    """Fall back when the window's violation rate (violating SLA classes / SLA classes) exceeds this."""
    sla_min_samples: int = 5
    """The SLA rule needs at least this many adaptive intervals in the window."""
    recover_intervals: int = 20
    """Consecutive healthy intervals (policy answered in time, SLA within threshold) to go back to adaptive."""

    def __post_init__(self) -> None:
        if not 0 < self.deadline_fraction <= 1:
            raise ValueError(f"deadline_fraction must be in (0, 1], got {self.deadline_fraction}")
        if self.sla_window < 1 or self.recover_intervals < 1 or not 1 <= self.sla_min_samples <= self.sla_window:
            raise ValueError("sla_window, recover_intervals >= 1 and 1 <= sla_min_samples <= sla_window needed")
        if not 0 <= self.sla_threshold <= 1:
            raise ValueError(f"sla_threshold must be in [0, 1], got {self.sla_threshold}")


@dataclass(frozen=True)
class Verdict:
    """The watchdog's decision for one interval."""

    mode: Mode
    reason: str
    """Why the mode is what it is ('' when adaptive and healthy)."""
    changed: bool
    """The mode differs from the previous interval's."""


class Watchdog:
    """The adaptive/fallback state machine of one tenant.

    Args:
        config: thresholds.
    """

    def __init__(self, config: WatchdogConfig | None = None) -> None:
        self.config = config or WatchdogConfig()
        self.mode = Mode.ADAPTIVE
        self.reason = ""
        self.healthy_streak = 0
        self._sla: deque[float] = deque(maxlen=self.config.sla_window)

    @property
    def sla_rate(self) -> float:
        """Mean SLA violation rate over the window of adaptive intervals (0 when empty)."""
        return sum(self._sla) / len(self._sla) if self._sla else 0.0

    def _sla_degraded(self) -> bool:
        c = self.config
        return len(self._sla) >= c.sla_min_samples and self.sla_rate > c.sla_threshold

    def update(self, outcome: Outcome, sla_rate: float | None, detail: str = "") -> Verdict:
        """Fold in one interval and return the mode to apply now.

        Args:
            outcome: how this interval's policy call went.
            sla_rate: violation rate of the interval just measured (fraction of SLA classes
                violating); it is charged to the policy only when that interval ran adaptive.
                None: no SLA classes.
            detail: the error or stall text, for the reason.
        """
        before = self.mode
        if sla_rate is not None and before is Mode.ADAPTIVE:
            self._sla.append(float(sla_rate))
        if outcome is not Outcome.OK:
            self._fall_back(f"policy {outcome.value}" + (f": {detail}" if detail else ""))
        elif before is Mode.ADAPTIVE and self._sla_degraded():
            self._fall_back(f"SLA violation rate {self.sla_rate:.2f} > {self.config.sla_threshold:.2f}")
        elif before is Mode.FALLBACK:
            # In fallback the SLA reflects the static rules, not the policy: only its health counts.
            self.healthy_streak += 1
            if self.healthy_streak >= self.config.recover_intervals:
                self.mode, self.reason = Mode.ADAPTIVE, ""
                self._sla.clear()  # the policy gets a fresh window
        return Verdict(self.mode, self.reason, self.mode is not before)

    def _fall_back(self, reason: str) -> None:
        self.mode, self.reason = Mode.FALLBACK, reason
        self.healthy_streak = 0
        self._sla.clear()

    def report_failure(self, reason: str) -> Verdict:
        """Fall back now for a reason outside the policy call (the backend failed to apply its plan)."""
        before = self.mode
        self._fall_back(reason)
        return Verdict(self.mode, self.reason, self.mode is not before)

    def force_adaptive(self) -> None:
        """Back to adaptive now (after a policy hot swap, the operator trusts the new policy)."""
        self.mode, self.reason, self.healthy_streak = Mode.ADAPTIVE, "", 0
        self._sla.clear()
