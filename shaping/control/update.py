"""Model updates of a running agent: the inbox's new global model, gated in the background, swapped in, rolled back.

Driven by ``ModelUpdater.on_step`` after every control step, from the loop's own thread:

1. while nothing is under way, poll the ModelInbox (a stat of current.json);
2. a new version is loaded and judged by the SafetyGate in a background thread, so the loop keeps
   stepping; an accepted model goes to ``ControlLoop.swap_policy`` and controls from the next step;
3. from the step it first controls, the SLA violation rate of the next ``rollback_intervals`` intervals is
   compared with that of the ``rollback_intervals`` before the swap; worse by more than ``rollback_margin``
   swaps the previous policy (kept) back in.

A newer version published while a gate or a rollback watch is under way waits for it; versions in between are
skipped (the inbox delivers the newest).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shaping.control.gate import GateConfig, GateVerdict, SafetyGate
from shaping.control.handover import ModelInbox, ModelUpdate
from shaping.control.loop import ControlLoop, StepRecord
from shaping.control.policy import ControlPolicy, ModelPolicy

LOG = logging.getLogger("fedshape.update")
#: Verdicts kept for the summary.
RECENT_VERDICTS = 10


@dataclass(frozen=True)
class UpdateConfig:
    """Settings of the model updates."""

    gate: GateConfig = field(default_factory=GateConfig)
    """The safety gate's margin and twin size."""
    rollback_intervals: int = 20
    """Intervals compared before and after a swap."""
    rollback_margin: float = 0.05
    """Largest increase of the mean SLA violation rate after a swap before it is rolled back (per-interval
    rates of a few SLA classes are coarse: a tenant with three moves in steps of 1/3)."""
    epsilon: float = 0.0
    """Exploration of the models loaded (ModelPolicy)."""
    deterministic: bool = True
    """Greedy actions of the models loaded."""

    def __post_init__(self) -> None:
        if self.rollback_intervals < 1 or self.rollback_margin < 0:
            raise ValueError(f"rollback needs intervals >= 1 and margin >= 0, got {self.rollback_intervals}, "
                             f"{self.rollback_margin}")  # fmt: skip


class RollbackMonitor:
    """Compares the mean SLA violation rate of N intervals after a swap with the N before it.

    Args:
        intervals: N.
        margin: how much worse the mean after may be.
    """

    def __init__(self, intervals: int, margin: float) -> None:
        self.intervals, self.margin = intervals, margin
        self.recent: deque[float] = deque(maxlen=intervals)
        self.before: list[float] | None = None
        self.after: list[float] = []

    @property
    def watching(self) -> bool:
        """Whether a swap is being watched."""
        return self.before is not None

    def start(self) -> None:
        """A swap took effect: what was measured so far is the 'before'."""
        self.before, self.after = list(self.recent), []

    def add(self, sla_rate: float | None) -> bool | None:
        """Record one interval's rate (None, a tenant without SLA classes, is skipped).

        Returns:
            While watching and once N intervals after the swap are in: True to roll back, False to keep; else None.
        """
        if sla_rate is None:
            return None
        self.recent.append(sla_rate)
        if self.before is None:
            return None
        self.after.append(sla_rate)
        if len(self.after) < self.intervals:
            return None
        before, after = self.before, self.after
        self.before, self.after = None, []
        if not before:  # nothing measured before the swap: nothing to compare with
            return False
        return sum(after) / len(after) > sum(before) / len(before) + self.margin


@dataclass(frozen=True)
class ModelState:
    """What the agent reports about its model updates (the rules service's ``ModelStatus``)."""

    version: int | None
    """The hand-over version in force (None: the policy the agent started with)."""
    installed_at: float | None
    """Wall-clock time (seconds since the epoch) the version in force took control; None: never swapped."""
    last_verdict: tuple[int, GateVerdict, float] | None
    """(candidate version, verdict, wall-clock time) of the last gate; None: no model delivered yet."""
    counts: dict[str, int]
    """Verdicts so far: ``accepted`` and ``rejected:<reason>``."""
    rollbacks: int
    last_rollback: tuple[int, int, float] | None
    """(version rolled back, version in force again (0: the starting policy), wall-clock time); None: none."""


@dataclass
class _Swap:
    policy: ControlPolicy
    version: int
    previous: ControlPolicy
    previous_version: int | None
    previous_installed_at: float | None


class ModelUpdater:
    """Delivers new global models to a running ControlLoop through the gate, with rollback.

    Args:
        loop: the running loop (its metrics get the versions, verdicts and rollbacks).
        inbox: where new models arrive.
        gate: the safety gate.
        config: rollback and loading settings.
        load: turns a delivered model into a policy (default ModelPolicy.from_checkpoint for the loop's tenant).
        logger: where swaps and rollbacks are logged.
        wall_clock: seconds since the epoch, for the times in ``state()`` (the status report).
    """

    def __init__(self, loop: ControlLoop, inbox: ModelInbox, gate: SafetyGate, config: UpdateConfig | None = None, *,
                 load: Callable[[ModelUpdate], ControlPolicy] | None = None,
                 logger: logging.Logger = LOG, wall_clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.loop, self.inbox, self.gate = loop, inbox, gate
        self.wall_clock = wall_clock
        self.config = config or UpdateConfig()
        self.load = load or self._load_model
        self.log = logger
        self.rollback = RollbackMonitor(self.config.rollback_intervals, self.config.rollback_margin)
        self.version: int | None = None
        """The inbox version in force (None: the policy the agent started with)."""
        self.previous: ControlPolicy | None = None
        """The policy the last swap replaced (what a rollback restores)."""
        self.verdicts: deque[tuple[int, GateVerdict]] = deque(maxlen=RECENT_VERDICTS)
        self.counts: Counter[str] = Counter()
        self.rollbacks = 0
        self.installed_at: float | None = None
        """Wall-clock time the version in force took control (None: the policy the agent started with)."""
        self.last_verdict: tuple[int, GateVerdict, float] | None = None
        self.last_rollback: tuple[int, int, float] | None = None
        self.swap_steps: list[tuple[int, int]] = []
        """(version, step) of every model that took control (rollbacks included)."""
        self.swap_times: list[float] = []
        """Wall-clock time of each of swap_steps, once its step applied the model's plan (seconds since the epoch)."""
        self._thread: threading.Thread | None = None
        self._pending: _Swap | None = None
        self._watching: _Swap | None = None
        self._lock = threading.Lock()
        t = loop.spec.name
        loop.metrics.model_version.labels(t).set(0)

    def _load_model(self, update: ModelUpdate) -> ControlPolicy:
        c = self.config
        return ModelPolicy.from_checkpoint(update.path, self.loop.spec, epsilon=c.epsilon,
                                           deterministic=c.deterministic)  # fmt: skip

    def start(self) -> None:
        """Evaluate the static rules and the policy in force on the twin in the background, so the first gate
        only evaluates its candidate."""
        in_force = self.loop.policy

        def prime() -> None:
            try:
                self.gate.rules_rate()
                self.gate.policy_rate(in_force)
            except Exception as err:  # the gate reports it again when a candidate comes
                self.log.warning("tenant %s: the gate's twin failed: %s: %s", self.loop.spec.name,
                                 type(err).__name__, err)  # fmt: skip

        self._spawn(prime)

    def _spawn(self, fn: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=fn, name="fedshape-gate", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A gate, a swap or a rollback watch is under way."""
        return ((self._thread is not None and self._thread.is_alive()) or self._pending is not None
                or self._watching is not None)  # fmt: skip

    def _judge(self, update: ModelUpdate, in_force: ControlPolicy, in_force_version: int | None,
               in_force_since: float | None) -> None:
        """Load and gate one version (background thread); hand an accepted one to the loop."""
        mx, t = self.loop.metrics, self.loop.spec.name
        try:
            candidate = self.load(update)
        except Exception as err:  # a broken publication is rejected, the agent goes on
            detail = f"{type(err).__name__}: {err}".splitlines()[0]
            verdict = GateVerdict(False, "load_error", None, None, None, 0.0, detail)
            self.log.warning("tenant %s: model version %d rejected: %s", t, update.version, detail)
        else:
            verdict = self.gate.check(candidate, in_force)
        mx.gate_verdicts.labels(t, "accepted" if verdict.accepted else "rejected", verdict.reason).inc()
        mx.gate_seconds.labels(t).observe(verdict.seconds)
        for who, rate in (("candidate", verdict.candidate), ("in_force", verdict.in_force), ("rules", verdict.rules)):
            if rate is not None:
                mx.gate_sla_rate.labels(t, who).set(rate)
        with self._lock:
            self.verdicts.append((update.version, verdict))
            self.last_verdict = (update.version, verdict, self.wall_clock())
            self.counts["accepted" if verdict.accepted else f"rejected:{verdict.reason}"] += 1
            if verdict.accepted:
                self._pending = _Swap(candidate, update.version, in_force, in_force_version, in_force_since)
                self.loop.swap_policy(candidate)

    def on_step(self, rec: StepRecord) -> None:
        """Call after every step of the loop (its thread): rollback watch, swap bookkeeping, inbox poll."""
        t = self.loop.spec.name
        verdict = self.rollback.add(rec.sla_rate)
        with self._lock:
            pending = self._pending
        if pending is not None and self.loop.policy is pending.policy:
            self._took_control(pending, rec.step)
            with self._lock:
                self._pending = None
        elif verdict is not None and self._watching is not None:
            watched, self._watching = self._watching, None
            if verdict:
                self._roll_back(watched, rec.step)
        if not self.busy:
            update = self.inbox.poll()
            if update is not None:
                self.log.info("tenant %s: model version %d received: %s", t, update.version, update.path)
                in_force, version, since = self.loop.policy, self.version, self.installed_at
                self._spawn(lambda: self._judge(update, in_force, version, since))

    def _took_control(self, swap: _Swap, step: int) -> None:
        with self._lock:
            self.version, self.previous, self.installed_at = swap.version, swap.previous, self.wall_clock()
        self.swap_steps.append((swap.version, step))
        self.swap_times.append(self.installed_at)
        self.loop.metrics.model_version.labels(self.loop.spec.name).set(swap.version)
        self.log.info("tenant %s: model version %d controls from step %d", self.loop.spec.name, swap.version, step)
        if self.loop.n_sla > 0:  # without SLA classes there is no rate to watch, and the watch would never end
            self._watching = swap
            self.rollback.start()

    def _roll_back(self, swap: _Swap, step: int) -> None:
        t = self.loop.spec.name
        with self._lock:
            self.rollbacks += 1
            self.last_rollback = (swap.version, swap.previous_version or 0, self.wall_clock())
        self.loop.metrics.rollbacks.labels(t).inc()
        self.log.warning("tenant %s: model version %d degraded the SLAs over %d intervals; rolling back to %s at "
                         "step %d", t, swap.version, self.rollback.intervals, swap.previous.name, step)  # fmt: skip
        self.loop.swap_policy(swap.previous)
        with self._lock:
            # The restored version reads as installed when it first took control, as before the swap.
            self.version, self.previous = swap.previous_version, None
            self.installed_at = swap.previous_installed_at
        self.loop.metrics.model_version.labels(t).set(swap.previous_version or 0)
        self.swap_steps.append((swap.previous_version or 0, step + 1))
        self.swap_times.append(self.wall_clock())  # the restored policy decides from the next step

    def close(self, timeout: float | None = None) -> None:
        """Wait for a gate under way (it cannot be interrupted; its verdict is then discarded with the loop)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def state(self) -> ModelState:
        """A consistent snapshot of the version in force, the last verdict and the rollbacks (any thread)."""
        with self._lock:
            return ModelState(self.version, self.installed_at, self.last_verdict, dict(self.counts), self.rollbacks,
                              self.last_rollback)

    def summary(self) -> dict[str, Any]:
        """Model version in force, verdict counts, recent verdicts and rollbacks, for the agent's exit summary."""
        with self._lock:
            verdicts = [{"version": v, **d.to_dict()} for v, d in self.verdicts]
            counts = dict(self.counts)
        return {"model_version": self.version, "gate": counts, "verdicts": verdicts, "rollbacks": self.rollbacks,
                "swaps": [{"version": v, "step": s, "at": t}
                          for (v, s), t in zip(self.swap_steps, self.swap_times, strict=True)]}  # fmt: skip
