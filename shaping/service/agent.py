"""TenantAgent: keeps a tenant's control loop in step with its rules in the service, and reports back.

Three threads. The watch thread follows `WatchRules` (reconnecting with backoff when the service is
unreachable) and hands each new revision, compiled, to the control thread. The control thread owns
the ControlLoop: it steps it every interval and, when new rules arrive, installs them and steps at
once (so the kernel follows a change within one step, not one interval). Same spec: the loop keeps
its state and only its static plan and pinned entities change; a new spec (entities, classes, QoS):
a new loop from the factory. The last rules seen are kept in a local file, so an agent restarted
while the service is down enforces them too; the loop simply goes on when the service goes away.
The third thread follows `WatchAppMetrics`: the application metrics the tenant pushed through the
Client API go into the monitor's AppMetrics (`put`, as if pushed on its local socket), FPS as FPS/60.
With `make_updater`, each loop gets a ModelUpdater (federated models from the hand-over inbox, gated,
swapped in, rolled back), stepped after every control step; its state goes into the status report.
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
from shaping.control.update import ModelState, ModelUpdater
from shaping.monitor.appmetrics import AppMetricError, AppMetrics
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
#: The AppMetrics a loop observes, or None (see `monitor_app_metrics`).
AppSink = Callable[[ControlLoop], AppMetrics | None]
#: The model updater of a new loop (None: no model hand-over for these rules, e.g. no adaptive entity).
UpdaterFactory = Callable[[ControlLoop, CompiledRules], ModelUpdater | None]

#: Frames per second that read as application metric 1 (the spec's metric of a game is FPS/60).
FPS_FULL = 60.0


def app_values(name: str, value: float) -> dict[str, float] | None:
    """The monitor's values of one metric pushed through the Client API (None: a name the monitor has no slot for)."""
    if name == "fps":
        return {"app_metric": min(1.0, max(0.0, value / FPS_FULL))}
    if name == "completion_rate":
        return {"app_metric": value}
    return None


def monitor_app_metrics(loop: ControlLoop) -> AppMetrics | None:
    """The AppMetrics of the Monitor behind a loop's backend (through wrappers' `inner`); None without a monitor.

    A monitor built without one (no local socket) gets an in-process AppMetrics, so remote pushes still count.
    """
    backend: Any = loop.backend
    for _ in range(8):  # wrappers (_Tap, TimedBackend) nest a few deep at most
        monitor = getattr(backend, "monitor", None)
        if monitor is not None:
            if getattr(monitor, "app", None) is None:
                monitor.app = AppMetrics(monitor.spec)
            app: AppMetrics = monitor.app
            return app
        backend = getattr(backend, "inner", None)
        if backend is None:
            break
    return None


def model_status(state: ModelState) -> pb.ModelStatus:
    """The report's ModelStatus of an updater's state (times on the agent's wall clock, 0 when never)."""
    rejected = {key.removeprefix("rejected:"): n for key, n in state.counts.items() if key.startswith("rejected:")}
    status = pb.ModelStatus(version=state.version or 0, installed_at=state.installed_at or 0.0,
                            accepted=state.counts.get("accepted", 0), rejected=sum(rejected.values()),
                            rejections=[pb.RejectionCount(reason=r, count=n) for r, n in sorted(rejected.items())],
                            rollbacks=state.rollbacks)
    if state.last_verdict is not None:
        version, v, at = state.last_verdict
        rates = {name: rate for name, rate in (("candidate_sla_violation", v.candidate),
                 ("in_force_sla_violation", v.in_force), ("rules_sla_violation", v.rules)) if rate is not None}
        status.last_verdict.CopyFrom(pb.GateVerdict(candidate_version=version, accepted=v.accepted, reason=v.reason,
                                                    detail=v.detail[:500], decided_at=at, **rates))
    if state.last_rollback is not None:
        version, restored, at = state.last_rollback
        status.last_rollback.CopyFrom(pb.ModelRollback(version=version, restored_version=restored, rolled_back_at=at))
    return status


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
        app_sink: where pushed application metrics go for a loop (None: not followed).
        make_updater: builds the model updater of each new loop (None: no model hand-over); a new spec builds a
            new loop, whose updater starts from the policy the factory gave it and counts its verdicts afresh.
    """

    def __init__(self, stub: Any, tenant: str, scenario: ScenarioConfig, make_loop: LoopFactory, *,
                 interval_s: float = 0.1, state_path: Path | None = None, report_every_s: float = 1.0,
                 retry_s: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = LOG, app_sink: AppSink | None = monitor_app_metrics,
                 make_updater: UpdaterFactory | None = None) -> None:
        self.stub, self.tenant, self.scenario, self.make_loop = stub, tenant, scenario, make_loop
        self.interval_s, self.state_path = interval_s, state_path
        self.report_every_s, self.retry_s = report_every_s, retry_s
        self.clock, self.log, self.app_sink = clock, logger, app_sink
        self.make_updater = make_updater
        self.loop: ControlLoop | None = None
        self.updater: ModelUpdater | None = None
        """The current loop's model updater (None: no model hand-over)."""
        self.compiled: CompiledRules | None = None
        self.connected = threading.Event()
        """Set while the watch stream is open."""
        self.installed: list[tuple[int, float]] = []
        """(revision, monotonic time) of every rule set installed, for tests and measurements."""
        self._pending: CompiledRules | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._streams: dict[str, Any] = {}
        self._app_pushes: dict[tuple[str, str], tuple[float, float]] = {}
        """(class, metric name) -> (value, push time on `clock`): replayed into each new loop's sink."""
        self._sink: AppMetrics | None = None
        self._threads: list[threading.Thread] = []
        self._tap: _Tap | None = None
        self._last_report = -float("inf")
        self.reports_failed = 0
        self.failure: Exception | None = None
        """What stopped the agent: the loop of new rules could not be built (the factory raised); None while fine."""
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

    def _follow(self, what: str, open_stream: Callable[[], Any], handle: Callable[[Any], None],
                connected: threading.Event | None = None) -> None:
        """Follow a server stream, reconnecting with backoff, until stopped (or the service lacks the call)."""
        delay = self.retry_s
        while not self._stop.is_set():
            try:
                stream = self._streams[what] = open_stream()
                if self._stop.is_set():
                    stream.cancel()  # stop() may have cancelled the previous stream just before this one opened
                if connected is not None:
                    connected.set()
                for message in stream:
                    delay = self.retry_s
                    handle(message)
            except grpc.RpcError as err:
                if self._stop.is_set():
                    break
                if err.code() is grpc.StatusCode.UNIMPLEMENTED:
                    self.log.info("tenant %s: the service has no %s; not following it", self.tenant, what)
                    break
                self.log.warning("tenant %s: rules service unreachable on %s (%s); enforcing revision %s", self.tenant,
                                 what, err.code().name, self.compiled.revision if self.compiled else None)
            if connected is not None:
                connected.clear()
            self._stop.wait(delay)
            delay = min(5.0, delay * 2)

    def _watch(self) -> None:
        def open_stream() -> Any:
            after = self.compiled.revision if self.compiled else 0
            return self.stub.WatchRules(cpb.WatchRulesRequest(tenant=self.tenant, after_revision=after))

        self._follow("WatchRules", open_stream, lambda m: self._offer(rules_from_pb(m)), self.connected)

    def _watch_apps(self) -> None:
        self._follow("WatchAppMetrics", lambda: self.stub.WatchAppMetrics(pb.TenantRef(tenant=self.tenant)),
                     self._on_app_metric)

    def _on_app_metric(self, m: cpb.PushedAppMetric) -> None:
        at = self.clock() - max(0.0, m.age_s)
        with self._lock:
            self._app_pushes[(m.class_name, m.name)] = (m.value, at)
            sink = self._sink
        if sink is not None:
            self._feed(sink, m.class_name, m.name, m.value, at)

    def _feed(self, sink: AppMetrics, klass: str, name: str, value: float, at: float) -> None:
        values = app_values(name, value)
        if values is None:
            return
        try:
            sink.put(klass, values, age_s=max(0.0, self.clock() - at))
        except AppMetricError as err:  # a class the enforced rules do not have (yet): replayed with the next rules
            self.log.debug("tenant %s: pushed metric not used now: %s", self.tenant, err)

    def _new_sink(self) -> None:
        """Point pushed metrics at the new loop's sink and replay the ones already received."""
        sink = self.app_sink(self.loop) if self.app_sink is not None and self.loop is not None else None
        with self._lock:
            self._sink = sink
            pushes = sorted(self._app_pushes.items(), key=lambda kv: kv[1][1])
        if sink is not None:
            for (klass, name), (value, at) in pushes:
                self._feed(sink, klass, name, value, at)

    # the control side

    def _install(self, compiled: CompiledRules) -> None:
        old = self.compiled
        same = old is not None and self.loop is not None and old.spec == compiled.spec \
            and old.any_adaptive == compiled.any_adaptive
        if same and self.loop is not None:
            # Same classes: keep the loop (and its policy, watchdog, experience); swap plan and pins.
            self.loop.fallback = StaticPolicy(compiled.spec, compiled.plan, name="static-rules")
            self.loop.guard = rules_guard(compiled, self.loop)
            if not compiled.any_adaptive:
                self.loop.policy = self.loop.fallback
        else:
            if self.updater is not None:
                self.updater.close(0)  # a gate under way ends on its own; its verdict goes to the old loop
            if self.loop is not None:
                self.loop.close()
            self.loop, self.updater, self._tap = None, None, None  # closed: not stepped, reported or closed again
            self.loop = self.make_loop(compiled)
            self._tap = _Tap(self.loop.backend)
            self.loop.backend = self._tap
            self._new_sink()
            self.updater = self._new_updater(compiled)
        self.compiled = compiled
        self.installed.append((compiled.revision, self.clock()))
        self.log.info("tenant %s: enforcing rules revision %d", self.tenant, compiled.revision)

    def _new_updater(self, compiled: CompiledRules) -> ModelUpdater | None:
        """The new loop's model updater, started; None without a factory, or when it fails (the loop goes on)."""
        if self.make_updater is None or self.loop is None:
            return None
        try:
            updater = self.make_updater(self.loop, compiled)
            if updater is not None:
                updater.start()
        except Exception:
            self.log.exception("tenant %s: no model updates for revision %d", self.tenant, compiled.revision)
            return None
        return updater

    def _control(self) -> None:
        next_t = self.clock()
        while not self._stop.is_set():
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is not None and (self.compiled is None or pending.revision != self.compiled.revision):
                try:
                    self._install(pending)
                except Exception as err:
                    # The old loop is closed already; going on would step it. Stop, and let the caller say why.
                    self.log.exception("tenant %s: no loop for rules revision %d", self.tenant, pending.revision)
                    self.failure = err
                    self._stop.set()
                    return
            if self.loop is not None and (pending is not None or self.clock() >= next_t):
                try:
                    rec = self.loop.step()
                    if self.updater is not None:
                        self.updater.on_step(rec)
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
        updater = self.updater
        return pb.AgentStatus(
            tenant=self.tenant, applied_revision=compiled.revision, reward=rec.reward,
            fallback=rec.mode is Mode.FALLBACK, fallback_reason=rec.reason[:500], mode=mode, classes=classes,
            steps=loop.steps, sla_ok_fraction=1.0 - (rec.sla_rate or 0.0),
            model=model_status(updater.state()) if updater is not None else None,
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
        """Start the watch, control and (with an app sink) app-metrics threads."""
        threads = [(self._watch, "watch"), (self._control, "control")]
        if self.app_sink is not None:
            threads.append((self._watch_apps, "apps"))
        for fn, name in threads:
            th = threading.Thread(target=fn, name=f"fedshape-agent-{self.tenant}-{name}", daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self, close_loop: bool = True) -> None:
        """Stop the threads; close the loop (its backend) unless asked not to."""
        self._stop.set()
        self._wake.set()
        for stream in list(self._streams.values()):
            stream.cancel()
        for th in self._threads:
            th.join(5)
        if self.updater is not None:
            self.updater.close(5)
        if close_loop and self.loop is not None:
            self.loop.close()


__all__ = ["FPS_FULL", "AppSink", "LoopFactory", "TenantAgent", "UpdaterFactory", "app_values", "build_loop",
           "model_status", "monitor_app_metrics", "rules_guard"]
