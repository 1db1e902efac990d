"""TenantAgent: keeps a tenant's control loop in step with its rules in the service, and reports back.

Two threads. The watch thread follows `WatchRules` (reconnecting with backoff when the service is
unreachable) and hands each new revision, compiled, to the control thread. The control thread owns
the ControlLoop: it steps it every interval and, when new rules arrive, installs them and steps at
once (so the kernel follows a change within one step, not one interval). Same spec: the loop keeps
its state and only its static plan and pinned entities change; a new spec (entities, classes, QoS):
a new loop from the factory. The last rules seen are kept in a local file, so an agent restarted
while the service is down enforces them too; the loop simply goes on when the service goes away.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from shaping.config import ScenarioConfig
from shaping.control import ControlLoop, ControlPolicy, Guard, Mode, Observed, StaticPolicy
from shaping.rules.codec import rules_from_dict, rules_to_dict
from shaping.rules.compile import CompiledRules, compile_rules
from shaping.rules.model import RuleSet
from shaping.rules.validate import RulesError
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.convert import rules_from_pb
from shaping.spec import sla_violations

LOG = logging.getLogger("fedshape.agent")

#: Builds the loop of a compiled rule set (backend, policy, guard); see `build_loop`.
LoopFactory = Callable[[CompiledRules], ControlLoop]


def rules_guard(compiled: CompiledRules, loop: ControlLoop | None = None) -> Guard:
    """The guard of a rule set: static entities pinned to the rules plan (the envelope of `loop` kept)."""
    static = sorted({c.entity for c, a in zip(compiled.spec.classes, compiled.adaptive, strict=True) if not a})
    static += [e.name for e in compiled.spec.entities if e.name not in {c.entity for c in compiled.spec.classes}]
    return Guard(compiled.spec, loop.guard.config if loop is not None else None, rules=compiled.plan,
                 static_entities=static)


def build_loop(compiled: CompiledRules, backend: Any, policy: ControlPolicy | None, **kwargs: Any) -> ControlLoop:
    """A ControlLoop for the rules: the static plan as fallback, static entities pinned by the guard.

    `policy` drives the adaptive classes; with no adaptive entity (or no policy) the loop runs the static plan.
    """
    if policy is None or not compiled.any_adaptive:
        policy = StaticPolicy(compiled.spec, compiled.plan, name="static-rules")
    return ControlLoop(backend, policy, compiled.plan, guard=rules_guard(compiled), **kwargs)


class _Tap:
    """Keeps the last Observed of a backend (for the status report)."""

    def __init__(self, backend: Any) -> None:
        self.inner = backend
        self.last: Observed | None = None

    @property
    def spec(self) -> Any:
        return self.inner.spec

    def observe(self) -> Observed:
        self.last = self.inner.observe()
        return self.last

    def apply(self, plan: Any) -> None:
        self.inner.apply(plan)

    def close(self) -> None:
        self.inner.close()


class TenantAgent:
    """Runs one tenant's loop from the rules the service holds.

    Args:
        stub: ClientService stub on a channel authenticated as the tenant.
        tenant: the tenant's name.
        scenario: provider paths and action levels (as the service has them).
        make_loop: builds the loop of a compiled rule set (see `build_loop`).
        interval_s: control interval.
        state_path: JSON file of the last rules seen (None: not kept across restarts).
        report_every_s: how often the agent reports its status.
        retry_s: first reconnect delay; doubles up to 5 s.
        clock: monotonic clock.
    """

    def __init__(self, stub: Any, tenant: str, scenario: ScenarioConfig, make_loop: LoopFactory, *,
                 interval_s: float = 0.1, state_path: Path | None = None, report_every_s: float = 1.0,
                 retry_s: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = LOG) -> None:
        self.stub, self.tenant, self.scenario, self.make_loop = stub, tenant, scenario, make_loop
        self.interval_s, self.state_path = interval_s, state_path
        self.report_every_s, self.retry_s = report_every_s, retry_s
        self.clock, self.log = clock, logger
        self.loop: ControlLoop | None = None
        self.compiled: CompiledRules | None = None
        self.connected = threading.Event()
        """Set while the watch stream is open."""
        self.installed: list[tuple[int, float]] = []
        """(revision, monotonic time) of every rule set installed, for tests and measurements."""
        self._pending: CompiledRules | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stream: Any = None
        self._threads: list[threading.Thread] = []
        self._tap: _Tap | None = None
        self._last_report = -float("inf")
        self.reports_failed = 0
        if state_path is not None and state_path.exists():
            self._offer(rules_from_dict(json.loads(state_path.read_text())), save=False)

    # the watch side

    def _offer(self, rules: RuleSet, save: bool = True) -> None:
        try:
            compiled = compile_rules(rules, self.scenario)
        except RulesError as err:
            # Rules the service accepted compile here too, unless they have no class yet: keep enforcing the old ones.
            self.log.warning("tenant %s: revision %d not enforced: %s", self.tenant, rules.revision, err)
            return
        if save and self.state_path is not None:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(rules_to_dict(rules)))
            tmp.replace(self.state_path)  # atomic: a crash leaves the old file or the new one
        with self._lock:
            self._pending = compiled
        self._wake.set()

    def _watch(self) -> None:
        delay = self.retry_s
        while not self._stop.is_set():
            after = self.compiled.revision if self.compiled else 0
            try:
                self._stream = self.stub.WatchRules(cpb.WatchRulesRequest(tenant=self.tenant, after_revision=after))
                self.connected.set()
                for message in self._stream:
                    delay = self.retry_s
                    self._offer(rules_from_pb(message))
            except grpc.RpcError as err:
                if self._stop.is_set():
                    break
                self.log.warning("tenant %s: rules service unreachable (%s); enforcing revision %s",
                                 self.tenant, err.code().name, self.compiled.revision if self.compiled else None)
            self.connected.clear()
            self._stop.wait(delay)
            delay = min(5.0, delay * 2)

    # the control side

    def _install(self, compiled: CompiledRules) -> None:
        old = self.compiled
        same = old is not None and self.loop is not None and old.spec == compiled.spec \
            and old.matches == compiled.matches and old.any_adaptive == compiled.any_adaptive
        if same and self.loop is not None:
            # Same classes: keep the loop (and its policy, watchdog, experience); swap plan and pins.
            self.loop.fallback = StaticPolicy(compiled.spec, compiled.plan, name="static-rules")
            self.loop.guard = rules_guard(compiled, self.loop)
            if not compiled.any_adaptive:
                self.loop.policy = self.loop.fallback
        else:
            if self.loop is not None:
                self.loop.close()
            self.loop = self.make_loop(compiled)
            self._tap = _Tap(self.loop.backend)
            self.loop.backend = self._tap
        self.compiled = compiled
        self.installed.append((compiled.revision, self.clock()))
        self.log.info("tenant %s: enforcing rules revision %d", self.tenant, compiled.revision)

    def _control(self) -> None:
        next_t = self.clock()
        while not self._stop.is_set():
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is not None and (self.compiled is None or pending.revision != self.compiled.revision):
                self._install(pending)
            if self.loop is not None and (pending is not None or self.clock() >= next_t):
                try:
                    self.loop.step()
                except Exception:
                    self.log.exception("tenant %s: control step failed; retrying next interval", self.tenant)
                now = self.clock()
                if now >= next_t:  # a scheduled step (not only the extra one for new rules): next interval
                    next_t = max(next_t + self.interval_s, now)
                self._maybe_report()
            self._wake.wait(max(0.0, next_t - self.clock()) if self.loop is not None else 1.0)
            self._wake.clear()

    def status(self) -> pb.AgentStatus:
        """The agent's status as the service stores it."""
        loop, compiled = self.loop, self.compiled
        if loop is None or compiled is None or not loop.history:
            return pb.AgentStatus(tenant=self.tenant)
        rec = loop.history[-1]
        mode = "adaptive" if all(compiled.adaptive) else "mixed" if compiled.any_adaptive else "static"
        classes = []
        observed = self._tap.last if self._tap is not None else None
        if observed is not None:
            m = observed.metrics
            bad = sla_violations(m, loop.qos).tolist()
            for i, c in enumerate(compiled.spec.classes):
                classes.append(pb.ClassStatus(
                    name=c.name, offered_mbps=float(m.offered_mbps[i]), delivered_mbps=float(m.delivered_mbps[i]),
                    loss=float(m.loss[i]), delay_p99_ms=float(m.delay_p99_ms[i]), app_metric=float(m.app_metric[i]),
                    sla_ok=not bad[i], sla_detail="" if not bad[i] else "SLA violated this interval"))
        return pb.AgentStatus(
            tenant=self.tenant, applied_revision=compiled.revision, reward=rec.reward,
            fallback=rec.mode is Mode.FALLBACK, fallback_reason=rec.reason[:500], mode=mode, classes=classes,
            steps=loop.steps, sla_ok_fraction=1.0 - (rec.sla_rate or 0.0),
        )

    def _maybe_report(self) -> None:
        now = self.clock()
        if now - self._last_report < self.report_every_s:
            return
        self._last_report = now
        try:
            self.stub.ReportStatus(self.status(), timeout=max(0.05, self.interval_s / 2))
        except grpc.RpcError:
            self.reports_failed += 1  # unreachable: keep shaping, report again later

    # lifecycle

    def start(self) -> TenantAgent:
        """Start the watch and control threads."""
        for fn, name in ((self._watch, "watch"), (self._control, "control")):
            th = threading.Thread(target=fn, name=f"fedshape-agent-{self.tenant}-{name}", daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self, close_loop: bool = True) -> None:
        """Stop both threads; close the loop (its backend) unless asked not to."""
        self._stop.set()
        self._wake.set()
        if self._stream is not None:
            self._stream.cancel()
        for th in self._threads:
            th.join(5)
        if close_loop and self.loop is not None:
            self.loop.close()


__all__ = ["LoopFactory", "TenantAgent", "build_loop", "rules_guard"]
