"""The control loop of one tenant: observe, ask the policy, guard the plan, apply; watchdog and experience.

Every interval (``step``):

1. a policy swapped in with ``swap_policy`` since the last step takes over (no step is skipped);
2. ``backend.observe()`` measures the interval that just ended; its reward and SLA violation rate
   complete the previous transition, which goes to the experience store;
3. the policy is called in a worker thread with a deadline (PolicyRunner);
4. the watchdog picks the mode: the policy's plan (adaptive) or the static rules (fallback) when
   the policy raised, stalled, returned a plan with a non-finite number (nan, inf) or the SLA
   degraded past the threshold, in this same interval;
5. the guard clamps the plan into the safety envelope and ``backend.apply`` enforces it; when the
   guard raises or the backend refuses the plan, the static rules are applied instead (fallback).

``run`` repeats ``step`` paced to the control interval (or as fast as possible with a simulator).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from shaping.agents.envelope import EnvelopeConfig
from shaping.config import RewardConfig
from shaping.control.backend import Backend, Observed
from shaping.control.experience import MODE_EXPLORE, MODE_FALLBACK, MODE_POLICY, ExperienceStore, Transition
from shaping.control.guard import Guard, GuardResult
from shaping.control.metrics import ControlMetrics
from shaping.control.policy import ControlPolicy, Decision, StaticPolicy
from shaping.control.runner import CallResult, PolicyRunner
from shaping.control.watchdog import Mode, Outcome, Watchdog, WatchdogConfig
from shaping.spec import QoSTensors, ShapingPlan, SpecError, compute_reward, qos_tensors, sla_violations
from shaping.spec.action import ActionLayout

LOG = logging.getLogger("fedshape.control")


@dataclass(frozen=True)
class LoopConfig:
    """Settings of the control loop."""

    interval_s: float = 0.1
    """Control interval, seconds."""
    deadline_s: float | None = None
    """Policy deadline, seconds; None: watchdog.deadline_fraction of the interval."""
    realtime: bool = True
    """Pace steps to the interval with the clock (False: back to back, for simulators)."""
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    """Fallback and recovery thresholds."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights of the recorded experience."""
    history: int = 1000
    """StepRecords kept in ``ControlLoop.history``."""
    max_apply_failures: int = 10
    """Consecutive intervals in which even the static rules could not be applied before ``step`` raises
    (a transient netlink error is retried at the next interval; a vanished interface is not)."""

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or (self.deadline_s is not None and self.deadline_s <= 0):
            raise ValueError("interval_s and deadline_s must be > 0")

    @property
    def deadline(self) -> float:
        """The policy deadline in seconds."""
        return self.deadline_s if self.deadline_s is not None else self.watchdog.deadline_fraction * self.interval_s


@dataclass(frozen=True)
class StepRecord:
    """What one control step did."""

    step: int
    mode: Mode
    reason: str
    """Why the loop is in fallback ('' when adaptive)."""
    policy: str
    """Name of the policy asked this step."""
    outcome: Outcome
    plan: ShapingPlan
    """The plan applied (after the guard)."""
    decision: Decision | None
    """The policy's decision (also in fallback, where it ran in shadow); None on error or stall."""
    reward: float
    """Reward of the interval observed at this step (the previous plan's effect)."""
    sla_rate: float | None
    """Fraction of SLA classes violating their SLA in that interval (None: no SLA classes)."""
    guard_changes: tuple[str, ...]
    seconds: float
    """Time from observe to apply."""


class ControlLoop:
    """Runs one tenant's shaping from a policy, with a guard, a watchdog, metrics and experience.

    Args:
        backend: where observe/apply go (SimBackend, KernelBackend).
        policy: the adaptive policy (ModelPolicy, ScriptedPolicy, ...).
        fallback: the tenant's static rules plan, applied by the watchdog; also the guard's rules.
        guard: the safety envelope; default Guard(spec, envelope, rules=fallback).
        envelope: envelope bounds for the default guard.
        store: experience store to record transitions in (None: not recorded).
        metrics: Prometheus metrics (default: a private registry).
        config: loop settings.
        clock, sleep: monotonic clock and sleep (injectable for tests).
        logger: where mode changes, swaps and errors are logged.
    """

    def __init__(
        self,
        backend: Backend,
        policy: ControlPolicy,
        fallback: ShapingPlan,
        *,
        guard: Guard | None = None,
        envelope: EnvelopeConfig | None = None,
        store: ExperienceStore | None = None,
        metrics: ControlMetrics | None = None,
        config: LoopConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger = LOG,
    ) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.policy = policy
        self.config = config or LoopConfig()
        self.fallback = StaticPolicy(self.spec, fallback, name="static-rules")
        self.guard = guard or Guard(self.spec, envelope, rules=fallback)
        self.store = store
        self.metrics = metrics or ControlMetrics(self.spec.name, [c.name for c in self.spec.classes])
        self.watchdog = Watchdog(self.config.watchdog)
        self.runner = PolicyRunner(clock)
        self.clock, self.sleep, self.log = clock, sleep, logger
        self.layout = ActionLayout(self.spec)
        q = qos_tensors([self.spec], len(self.spec.classes))
        self.qos = QoSTensors(*(x[0] for x in q))
        self.cap = torch.tensor(self.spec.cap_mbps)
        self.n_sla = int(self.qos.has_sla.sum())
        self.steps = 0
        self.history: deque[StepRecord] = deque(maxlen=self.config.history)
        self._pending_policy: ControlPolicy | None = None
        self._lock = threading.Lock()
        self._last: tuple[torch.Tensor, torch.Tensor, float, int, float] | None = None
        self._stop = threading.Event()
        self._apply_failures = 0

    @property
    def mode(self) -> Mode:
        """The mode of the last step."""
        return self.watchdog.mode

    def swap_policy(self, policy: ControlPolicy) -> None:
        """Replace the policy; it is asked from the next step on (thread-safe, no step skipped)."""
        with self._lock:
            self._pending_policy = policy

    def stop(self) -> None:
        """Make ``run`` return after the current step (thread-safe)."""
        self._stop.set()

    def _take_swap(self) -> None:
        with self._lock:
            new, self._pending_policy = self._pending_policy, None
        if new is None:
            return
        self.log.info("tenant %s: policy %s replaces %s at step %d", self.spec.name, new.name, self.policy.name,
                      self.steps)  # fmt: skip
        self.policy = new
        self.runner.reset()  # a stuck call of the old policy must not block the new one
        self.metrics.swaps.labels(self.spec.name).inc()

    def _score(self, observed: Observed) -> tuple[float, float | None]:
        m = observed.metrics
        reward = float(compute_reward(m, self.qos, self.cap, self.config.reward).reward)
        if self.n_sla == 0:
            return reward, None
        return reward, float(sla_violations(m, self.qos).sum()) / self.n_sla

    def _record(self, observed: Observed, reward: float) -> None:
        if self.store is not None and self._last is not None:
            obs, action, logprob, mode, t = self._last
            self.store.append(Transition(obs, action, logprob, reward, observed.obs, observed.done, mode, t))

    def _try_apply(self, plan: ShapingPlan) -> Exception | None:
        try:
            self.backend.apply(plan)
        except Exception as err:  # the kernel refused: the caller falls back, never the loop's end at once
            self.metrics.apply_errors.labels(self.spec.name).inc()
            return err
        self._apply_failures = 0
        return None

    def _check_finite(self, call: CallResult) -> CallResult:
        """A decision whose plan carries nan or inf counts as a policy error, in adaptive and in shadow.

        As an error the watchdog falls back and, while the policy keeps producing such plans in
        shadow, never counts it healthy again; clamping would instead hide a diverged model.
        """
        if call.decision is None:
            return call
        try:
            call.decision.plan.check_finite(self.spec)
        except SpecError as err:
            return replace(call, outcome=Outcome.ERROR, decision=None, detail=f"non-finite plan: {err}")
        return call

    def _safe(self) -> GuardResult:
        """The static rules, guarded; unguarded when the guard fails on them too (they were validated)."""
        try:
            return self.guard.clamp(self.fallback.plan)
        except Exception as err:  # a broken guard must not end the loop: the rules passed validate
            self.log.error("tenant %s: the guard failed on the static rules (%s: %s); applying them unguarded",
                           self.spec.name, type(err).__name__, err)  # fmt: skip
            return GuardResult(self.fallback.plan, ())

    def _guarded(self, decision: Decision, code: int, observed: Observed) -> tuple[Decision, int, GuardResult]:
        """The decision's plan clamped by the guard; the static rules (fallback) when the guard raises."""
        try:
            return decision, code, self.guard.clamp(decision.plan)
        except Exception as err:  # any guard failure is a fallback, never the loop's end
            self.log.error("tenant %s: the guard failed (%s: %s); applying the static rules",
                           self.spec.name, type(err).__name__, err)  # fmt: skip
            self._note(self.watchdog.report_failure(f"guard error: {type(err).__name__}: {err}"))
        return self.fallback.decide(observed), MODE_FALLBACK, self._safe()

    def _apply(self, plan: ShapingPlan) -> ShapingPlan:
        """Apply the plan; when the backend refuses it, fall back and apply the static rules instead.

        When the rules fail too, the error is logged and the next interval tries again; after
        ``max_apply_failures`` such intervals in a row it is raised.
        """
        err = self._try_apply(plan)
        if err is None:
            return plan
        safe = self._safe().plan
        if plan != safe:
            self.log.error("tenant %s: applying the plan failed (%s: %s); applying the static rules",
                           self.spec.name, type(err).__name__, err)  # fmt: skip
            self._note(self.watchdog.report_failure(f"apply error: {type(err).__name__}: {err}"))
            err = self._try_apply(safe)
            if err is None:
                return safe
        self._apply_failures += 1
        self.log.error("tenant %s: the static rules could not be applied (%d intervals in a row): %s: %s",
                       self.spec.name, self._apply_failures, type(err).__name__, err)  # fmt: skip
        if self._apply_failures >= self.config.max_apply_failures:
            raise err
        return safe

    def _note(self, verdict_changed: object) -> None:
        changed = getattr(verdict_changed, "changed", False)
        t = self.spec.name
        if not changed:
            return
        if self.watchdog.mode is Mode.FALLBACK:
            reason = self.watchdog.reason
            self.log.warning("tenant %s: FALLBACK to static rules at step %d: %s", t, self.steps, reason)
            self.metrics.fallbacks.labels(t, reason.split(":")[0]).inc()
            self.metrics.mode.labels(t).set(1)
        else:
            self.log.warning("tenant %s: back to ADAPTIVE shaping at step %d", t, self.steps)
            self.metrics.recoveries.labels(t).inc()
            self.metrics.mode.labels(t).set(0)

    def step(self) -> StepRecord:
        """One control interval: observe, decide, guard, apply, record."""
        t, mx = self.spec.name, self.metrics
        self._take_swap()
        t0 = self.clock()
        observed = self.backend.observe()
        reward, sla_rate = self._score(observed)
        self._record(observed, reward)
        call = self._check_finite(self.runner.call(self.policy, observed, self.config.deadline))
        mx.policy_outcomes.labels(t, call.outcome.value).inc()
        mx.policy_seconds.labels(t).observe(call.seconds)
        verdict = self.watchdog.update(call.outcome, sla_rate, call.detail)
        self._note(verdict)
        if verdict.mode is Mode.ADAPTIVE and call.decision is not None:
            decision, code = call.decision, MODE_EXPLORE if call.decision.explored else MODE_POLICY
        else:
            decision, code = self.fallback.decide(observed), MODE_FALLBACK
        decision, code, guarded = self._guarded(decision, code, observed)
        plan = self._apply(guarded.plan)
        if plan is not guarded.plan:
            code = MODE_FALLBACK
        action, logprob = decision.action, decision.logprob
        if guarded.clamped or plan is not guarded.plan:
            action, logprob = self.layout.encode(plan), math.nan  # not what the behaviour policy drew
        self._last = (observed.obs, torch.as_tensor(action), logprob if code != MODE_FALLBACK else math.nan, code,
                      observed.time_s)  # fmt: skip
        seconds = self.clock() - t0
        mode = self.watchdog.mode
        mx.steps.labels(t, mode.value).inc()
        mx.step_seconds.labels(t).observe(seconds)
        mx.reward.labels(t).set(reward)
        mx.sla_rate.labels(t).set(sla_rate or 0.0)
        mx.classes_observed(observed.metrics.delivered_mbps.tolist(), observed.metrics.delay_p99_ms.tolist(),
                            observed.metrics.loss.tolist())  # fmt: skip
        if code == MODE_EXPLORE:
            mx.explored.labels(t).inc()
        if guarded.clamped:
            mx.clamped.labels(t).inc()
            self.log.debug("tenant %s: guard changed %s", t, "; ".join(guarded.changes))
        rec = StepRecord(self.steps, mode, self.watchdog.reason, self.policy.name, call.outcome, plan,
                         call.decision, reward, sla_rate, guarded.changes, seconds)  # fmt: skip
        self.history.append(rec)
        self.steps += 1
        return rec

    def run(self, steps: int | None = None, on_step: Callable[[StepRecord], None] | None = None) -> int:
        """Run ``steps`` intervals (None: until ``stop``), paced to the interval when realtime.

        An interval whose work overran is counted (``fedshape_agent_overruns``) and the schedule
        restarts from now instead of bursting to catch up. Returns the number of steps run.
        """
        self._stop.clear()
        done = 0
        next_t = self.clock()
        while not self._stop.is_set() and (steps is None or done < steps):
            rec = self.step()
            done += 1
            if on_step is not None:
                on_step(rec)
            if not self.config.realtime or (steps is not None and done >= steps):
                continue
            next_t += self.config.interval_s
            delay = next_t - self.clock()
            if delay > 0:
                self.sleep(delay)
            else:
                self.metrics.overruns.labels(self.spec.name).inc()
                next_t = self.clock()
        return done

    def close(self) -> None:
        """Flush the experience store, stop the policy worker and close the backend."""
        self.runner.close()
        if self.store is not None:
            self.store.close()
        self.backend.close()
