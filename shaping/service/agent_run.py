"""``fedshape-agent --service``: the deployed agent, run from the tenant's rules in the rules service.

The agent connects as the tenant (mTLS with its `fedshape-pki` certificate, or the identity header of a
plaintext loopback service), checks once that the service knows it, then runs `TenantAgent`: the loop
of each rules revision is built here from the same options as the scenario-file mode (kernel backend
or --dry-run, monitor, policy or checkpoint, watchdog, experience, the model updater of --model-inbox).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric

from shaping.config import ScenarioConfig
from shaping.control.cli import (
    build_monitor,
    build_policy,
    build_updater,
    loop_config,
    recorded_operations,
    update_config,
)
from shaping.control.experience import ExperienceStore
from shaping.control.kernel_backend import KernelBackend, KernelSetup, make_enforcer
from shaping.control.loop import ControlLoop
from shaping.control.metrics import ControlMetrics
from shaping.control.notify import SdNotifier
from shaping.control.policy import ControlPolicy
from shaping.control.update import ModelUpdater
from shaping.rules.compile import CompiledRules, compile_rules
from shaping.rules.validate import RulesError
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.agent import TenantAgent, build_loop
from shaping.service.channel import client_stub, open_channel
from shaping.service.convert import rules_from_pb
from shaping.sim.scenarios import load_scenario

LOG = logging.getLogger("fedshape.agent")
#: Codes of a service that is not (yet) there: retried at start.
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ServiceError(Exception):
    """The rules service refused the agent, could not be reached, or the agent stopped on its rules."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        """The service did not answer (rather than refused)."""


def _refusal(target: str, tenant: str, err: grpc.RpcError, attempts: int, tls: bool) -> str:
    code, details = err.code(), err.details() or ""
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return f"rules service at {target} refused the agent's credentials: {details}"
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return f"rules service at {target} does not let this identity act as tenant {tenant!r}: {details}"
    if code is grpc.StatusCode.NOT_FOUND:
        return f"tenant {tenant!r} is unknown to the rules service at {target}: {details}"
    if code in UNREACHABLE:
        hint = " (a service that does not trust this certificate, or is not mTLS, ends this way too)" if tls else ""
        return f"rules service at {target} unreachable after {attempts} attempts: {code.name}: {details}{hint}"
    return f"rules service at {target}: {code.name}: {details}"


def check_service(stub: Any, target: str, tenant: str, attempts: int, *, tls: bool = False,
                  first_delay_s: float = 0.5, max_delay_s: float = 8.0, timeout_s: float = 5.0,
                  sleep: Callable[[float], None] = time.sleep) -> pb.RuleSet:
    """The tenant's rules, read once to check that the service is there and takes the agent.

    A service that does not answer is tried `attempts` times, the delay doubling from `first_delay_s` up to
    `max_delay_s`; any other refusal ends at once.

    Raises:
        ServiceError: with one line saying what is wrong (credentials, unknown tenant, unreachable).
    """
    delay = first_delay_s
    for attempt in range(1, max(1, attempts) + 1):
        try:
            rules: pb.RuleSet = stub.GetRules(pb.TenantRef(tenant=tenant), timeout=timeout_s)
            return rules
        except grpc.RpcError as err:
            if err.code() not in UNREACHABLE or attempt >= attempts:
                raise ServiceError(_refusal(target, tenant, err, attempt, tls),
                                   unreachable=err.code() in UNREACHABLE) from None
            LOG.warning("rules service at %s unreachable (%s), attempt %d of %d; retrying in %.1f s", target,
                        err.code().name, attempt, attempts, delay)
            sleep(delay)
            delay = min(max_delay_s, delay * 2)
    raise AssertionError("unreachable")  # the loop returns or raises


class _CurrentRegistry:
    """A Prometheus collector that serves the metrics of the loop in force (each loop has a registry of its own:
    a new spec's loop registers the same metric names)."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry | None = None

    def collect(self) -> Iterator[Metric]:
        registry = self.registry
        if registry is not None:
            yield from registry.collect()


def _recorded(loop: ControlLoop | None) -> int:
    """Operations the recording backend under a loop took (through the agent's wrappers); 0 on the kernel."""
    backend: Any = loop.backend if loop is not None else None
    while backend is not None and not isinstance(backend, KernelBackend):
        backend = getattr(backend, "inner", None)
    return (recorded_operations(backend) or 0) if backend is not None else 0


class ServiceLoops:
    """Builds the loop and model updater of each rules revision the way the scenario-file mode builds its own."""

    def __init__(self, args: argparse.Namespace, interval_s: float) -> None:
        self.args, self.interval_s = args, interval_s
        self.kernel = KernelSetup(tuple(args.iface), args.netns)
        self.updates = update_config(args)
        self.metrics = _CurrentRegistry()
        self.loop: ControlLoop | None = None
        """The last loop built."""
        self.earlier = (0, 0)
        """Steps and recorded operations (dry runs) of the loops before it: an agent runs for months."""

    @property
    def steps(self) -> int:
        """Control steps taken by all the loops built."""
        return self.earlier[0] + (self.loop.steps if self.loop is not None else 0)

    @property
    def recorded_operations(self) -> int:
        """Operations the recording backends of all the loops built took (0 unless a dry run)."""
        return self.earlier[1] + _recorded(self.loop)

    def policy(self, compiled: CompiledRules) -> ControlPolicy:
        """The policy of --policy/--checkpoint for the rules' spec (ValueError when it does not fit)."""
        return build_policy(self.args, compiled.spec, compiled.plan, rules_name="static-rules")

    def make_loop(self, compiled: CompiledRules) -> ControlLoop:
        """The loop of a rules revision: kernel backend (or a recording one), monitor, policy, watchdog."""
        args, spec = self.args, compiled.spec
        try:
            policy: ControlPolicy | None = self.policy(compiled)
        except ValueError as err:  # a checkpoint that does not fit the tenant's new classes, say
            LOG.error("tenant %s: revision %d runs its static rules: %s", spec.name, compiled.revision, err)
            policy = None
        enforcer, classids = make_enforcer(spec, self.kernel, dry_run=args.dry_run)
        backend = KernelBackend(spec, build_monitor(args, spec, classids), enforcer, teardown_on_close=args.teardown)
        store = None
        if args.experience:  # a store holds one layout: one directory per spec
            layout = hashlib.sha256(spec.fingerprint().encode()).hexdigest()[:12]
            store = ExperienceStore(Path(args.experience) / layout, spec)
        registry = CollectorRegistry()
        loop = build_loop(compiled, backend, policy, config=loop_config(args, self.interval_s), store=store,
                          metrics=ControlMetrics(spec.name, [c.name for c in spec.classes], registry))
        self.metrics.registry = registry
        if self.loop is not None:
            self.earlier = (self.steps, self.recorded_operations)
        self.loop = loop
        return loop

    def make_updater(self, loop: ControlLoop, compiled: CompiledRules) -> ModelUpdater | None:
        """The model updater of --model-inbox for rules with an adaptive entity; the twin is the rules' tenant."""
        if self.updates is None or not compiled.any_adaptive:
            return None
        return build_updater(self.args, self.updates, compiled.scenario, loop.guard.clamp(compiled.plan).plan, loop)


def _check_args(args: argparse.Namespace) -> tuple[ScenarioConfig, float]:
    """The service's scenario and the control interval (ValueError when the arguments do not fit)."""
    if not args.tenant:
        raise ValueError("--service needs --tenant NAME (the tenant whose rules the agent enforces)")
    if args.connect_attempts < 1 or args.report_interval_s <= 0:
        raise ValueError("--connect-attempts must be >= 1 and --report-interval-s > 0")
    scenario = load_scenario(args.tenant_config) if args.tenant_config else ScenarioConfig()
    paths = [p.name for p in scenario.paths]
    if len(args.iface) != len(paths):
        raise ValueError(f"the service's scenario has {len(paths)} paths {paths}: give --iface {len(paths)} times "
                         f"(got {args.iface})")
    return scenario, (args.interval_ms or scenario.control_interval_ms) / 1e3


def _first_rules(args: argparse.Namespace, stub: Any, loops: ServiceLoops, scenario: ScenarioConfig) -> int | None:
    """The revision the service holds now (None: unreachable, the --state-file's rules enforced meanwhile).

    The policy is built for those rules, so that a checkpoint that fits no tenant fails at start.
    """
    try:
        rules = check_service(stub, args.service, args.tenant, args.connect_attempts, tls=args.pki is not None)
    except ServiceError as err:
        if not (err.unreachable and args.state_file is not None and args.state_file.exists()):
            raise
        LOG.warning("%s; enforcing the rules kept in %s until it answers", err, args.state_file)
        return None
    try:
        compiled = compile_rules(rules_from_pb(rules), scenario)
    except RulesError:
        return rules.revision  # no classes yet: the agent waits for rules it can enforce
    loops.policy(compiled)
    return rules.revision


def run_service(args: argparse.Namespace, notifier: SdNotifier | None = None,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the tenant's agent from the rules service until SIGINT/SIGTERM or --steps; returns the summary.

    Args:
        notifier: where READY, heartbeats (while the agent runs) and STOPPING go.
        stop: set to stop the agent (what SIGINT/SIGTERM do; those handlers are set from the main thread only).

    Raises:
        ValueError: the arguments do not fit (exit 2).
        ServiceError: the service refused the agent or did not answer, or the agent stopped on its rules (exit 1).
    """
    scenario, interval = _check_args(args)
    loops = ServiceLoops(args, interval)
    notifier = notifier or SdNotifier(None)
    channel = open_channel(args.service, f"tenant/{args.tenant}", pki=args.pki,
                           server_name=args.server_name_override)
    agent: TenantAgent | None = None
    done = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stub = client_stub(channel)
        revision = _first_rules(args, stub, loops, scenario)
        if args.metrics_port is not None:
            served = CollectorRegistry()
            served.register(loops.metrics)
            start_http_server(args.metrics_port, registry=served)
        agent = TenantAgent(stub, args.tenant, scenario, loops.make_loop, interval_s=interval,
                            state_path=args.state_file, report_every_s=args.report_interval_s,
                            make_updater=loops.make_updater).start()
        LOG.info("tenant %s: rules from %s (revision %s), interfaces %s (netns %s), interval %.0f ms%s", args.tenant,
                 args.service, revision, ",".join(args.iface), args.netns or "-", interval * 1e3,
                 " [dry run]" if args.dry_run else "")
        notifier.ready()
        # Heartbeats from here while the control thread makes progress (or waits for rules it can enforce): a hung
        # step stops them. The budget counts the steps of every loop.
        last = -1
        while not done.wait(min(0.25, interval / 4)):
            if agent.failure is not None:
                break
            steps = loops.steps
            if steps != last or agent.loop is None:
                notifier.heartbeat()
                last = steps
            if args.steps is not None and steps >= args.steps:
                break
    finally:
        notifier.stopping()
        for s, h in previous.items():
            signal.signal(s, h)
        if agent is not None:
            agent.stop()
        channel.close()
        notifier.close()
    assert agent is not None  # set unless the try raised
    if agent.failure is not None:
        raise ServiceError(f"tenant {args.tenant}: stopped: {agent.failure}")
    return _summary(args, agent, loops)


def _summary(args: argparse.Namespace, agent: TenantAgent, loops: ServiceLoops) -> dict[str, Any]:
    loop = loops.loop
    return {
        "tenant": args.tenant,
        "service": args.service,
        "steps": loops.steps,
        "revision": agent.compiled.revision if agent.compiled is not None else None,
        "revisions": [revision for revision, _ in agent.installed],
        "policy": loop.policy.name if loop is not None else None,
        "reports_failed": agent.reports_failed,
        "recorded_operations": loops.recorded_operations if args.dry_run else None,
        **({"model_update": agent.updater.summary()} if agent.updater is not None else {}),
    }


__all__ = ["ServiceError", "ServiceLoops", "check_service", "run_service"]
