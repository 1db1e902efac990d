"""``python -m shaping.control`` / ``fedshape-agent``: run the control loop for one tenant on a real interface.

Two modes: from a scenario file (--tenant-config: the tenant and its static rules are in the file), or
from the rules service (--service: the tenant's rules, modes and QoS come from the Client API, which
shows the agent's reports; shaping.service.agent_run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from shaping.agents.envelope import EnvelopeConfig
from shaping.baselines import get_baseline
from shaping.checks import one_line
from shaping.config import ScenarioConfig
from shaping.control.experience import ExperienceStore
from shaping.control.gate import GateConfig, SafetyGate
from shaping.control.guard import Guard
from shaping.control.handover import ModelInbox
from shaping.control.heuristic import HeuristicControlPolicy
from shaping.control.kernel_backend import KernelBackend, KernelSetup, make_enforcer
from shaping.control.loop import ControlLoop, LoopConfig, StepRecord
from shaping.control.metrics import ControlMetrics
from shaping.control.notify import SdNotifier
from shaping.control.update import ModelUpdater, UpdateConfig
from shaping.control.policy import ControlPolicy, ModelPolicy, StaticPolicy
from shaping.control.watchdog import WatchdogConfig
from shaping.monitor import (
    AppMetrics,
    CgroupV2Source,
    HostSampler,
    Monitor,
    MonitorConfig,
    NetlinkClassStats,
    NullClassStats,
    ProbeScheduler,
    ProcPidSource,
    SockDiagRtt,
    TcpConnectProbe,
    UdpEchoProbe,
    VmSource,
)
from shaping.monitor.probes import Probe
from shaping.sim.scenarios import load_scenario
from shaping.spec import ShapingPlan, TenantSpec, tenant_spec

LOG = logging.getLogger("fedshape.agent")
#: Values of --policy.
POLICY_CHOICES = ("rules", "checkpoint", "adaptive_heuristic")
#: The watchdog's SLA threshold unless --sla-threshold says otherwise (see sla_threshold).
DEFAULT_SLA_THRESHOLD = 0.5


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="fedshape-agent",
        description="Run FedShape's control loop (observe, policy, guard, apply) for one tenant on real interfaces.",
    )
    p.add_argument("--tenant-config", help="scenario YAML file (or conf/scenario name) of the tenant; with --service: "
                                           "the service's scenario (provider paths, action levels), its tenants "
                                           "ignored (default: the built-in one, as `fedshape serve`)")
    p.add_argument("--tenant", help="tenant name in the file (default: the only tenant); with --service: the tenant "
                                    "whose rules the agent enforces (required)")
    service = p.add_argument_group("rules service", "run from the tenant's rules in the rules service")
    service.add_argument("--service", metavar="HOST:PORT",
                         help="rules service address: watch the tenant's rules there and report the agent's status")
    service.add_argument("--pki", type=Path, default=os.environ.get("FEDSHAPE_PKI"),
                         help="directory of `fedshape-pki` files: mTLS with PKI/ca.pem and PKI/tenant-NAME.pem/.key "
                              "(env FEDSHAPE_PKI); without it: a plaintext loopback service (--insecure-loopback)")
    service.add_argument("--server-name-override", help="name to check the service's certificate against")
    service.add_argument("--connect-attempts", type=int, default=5,
                         help="tries to reach the service at start, 0.5 s apart doubling up to 8 s, before giving up")
    service.add_argument("--report-interval-s", type=float, default=1.0,
                         help="how often the agent reports its status to the service")
    service.add_argument("--state-file", type=Path,
                         help="JSON file of the last rules received: enforced at once when the agent restarts, and "
                              "the agent starts from it when the service does not answer (default: not kept)")
    p.add_argument("--netns", help="network namespace (under /run/netns) of the interfaces; default: this one")
    p.add_argument("--iface", required=True, action="append",
                   help="interface of a path, once per path of the scenario, in path order")  # fmt: skip
    p.add_argument("--gateway", action="append", default=[],
                   help="next hop of a path, once per path in path order (default: on-link): the route a class "
                        "moved onto that path takes")  # fmt: skip
    p.add_argument("--policy", choices=POLICY_CHOICES,
                   help="what shapes adaptively: the static rules only, the --checkpoint's agent, or the rule-based "
                        "adaptive_heuristic (default: checkpoint with --checkpoint, else rules)")  # fmt: skip
    p.add_argument("--checkpoint", help="agent checkpoint (PPO/DQN), or a global model (.npz of a federated round "
                                        "or of pretraining, with its summary.json); default: the static rules only")
    p.add_argument("--rules", default="static_priority",
                   help="baseline whose plan is the static rules (fallback); with --service the rules are the tenant's")
    p.add_argument("--interval-ms", type=float, help="control interval (default: the scenario's)")
    p.add_argument("--steps", type=int, help="stop after N intervals (default: run until SIGINT/SIGTERM)")
    p.add_argument("--dry-run", action="store_true", help="record the operations instead of changing the kernel")
    p.add_argument("--epsilon", type=float, default=0.0, help="epsilon-greedy exploration inside the envelope")
    p.add_argument("--sample", action="store_true", help="sample the policy's actions instead of greedy ones")
    p.add_argument("--experience", help="directory of the experience store (default: not recorded)")
    p.add_argument("--experience-segment", type=int, default=256,
                   help="transitions per experience segment file: a trainer reading the store sees steps once "
                        "their segment is written (at 10 Hz, 256 is 26 s)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--app-socket", help="Unix datagram socket for pushed application metrics (JSON lines)")
    p.add_argument("--cgroup", action="append", default=[], metavar="VM=PATH", help="cgroup v2 path of a VM")
    p.add_argument("--cgroup-root", default="/sys/fs/cgroup", help="cgroup2 mount")
    p.add_argument("--pid", action="append", default=[], metavar="VM=PID", help="process holding a VM")
    p.add_argument("--proc-root", default="/proc", help="proc mount")
    p.add_argument("--probe", action="append", default=[], metavar="CLASS=tcp|udp:HOST:PORT",
                   help="active delay probe of a class (TCP connect time or UDP echo)")  # fmt: skip
    p.add_argument("--base-delay-ms", type=float, action="append", default=[],
                   help="one-way propagation delay of a path, once per path (default: TCP min_rtt / 2)")  # fmt: skip
    p.add_argument("--sla-threshold", type=float,
                   help="fall back above this SLA violation rate (default 0.5; 1, never, with adaptive_heuristic, "
                        "whose fallback would put the static routes back on a failed path)")  # fmt: skip
    p.add_argument("--recover-intervals", type=int, default=20, help="healthy intervals before adaptive again")
    p.add_argument("--model-inbox", help="hand-over directory where the tenant's Flower client publishes new global "
                                         "models: each is gated on the simulator twin, swapped in, rolled back if "
                                         "the SLAs degrade")  # fmt: skip
    p.add_argument("--gate-margin", type=float, default=0.02,
                   help="SLA violation rate a new model may add on the twin over the policy in force and the rules")
    p.add_argument("--gate-seeds", type=int, default=4, help="environments of the gate's twin")
    p.add_argument("--gate-steps", type=int, default=60, help="intervals of the gate's twin episode")
    p.add_argument("--rollback-intervals", type=int, default=20,
                   help="intervals after a swap compared with as many before it")  # fmt: skip
    p.add_argument("--rollback-margin", type=float, default=0.05,
                   help="mean SLA violation rate a swapped-in model may add before it is rolled back")  # fmt: skip
    p.add_argument("--teardown", action="store_true", help="remove the tenant's shaping on exit")
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


def _pick_tenant(scenario: ScenarioConfig, name: str | None) -> TenantSpec:
    if name is None:
        if len(scenario.tenants) != 1:
            raise ValueError(f"the file has tenants {[t.name for t in scenario.tenants]}: pick one with --tenant")
        return tenant_spec(scenario, 0)
    return tenant_spec(scenario, name)


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} {item!r}: expected NAME=VALUE")
        out[key] = value
    return out


def _probes(spec: TenantSpec, items: Sequence[str]) -> dict[int, list[Probe]]:
    names = {c.name: i for i, c in enumerate(spec.classes)}
    out: dict[int, list[Probe]] = {}
    for cls, target in _pairs(items, "--probe").items():
        if cls not in names:
            raise ValueError(f"--probe names unknown class {cls!r}; classes: {sorted(names)}")
        kind, _, rest = target.partition(":")
        host, _, port = rest.rpartition(":")
        if kind not in ("tcp", "udp") or not host or not port.isdigit():
            raise ValueError(f"--probe {cls}={target}: expected tcp:HOST:PORT or udp:HOST:PORT")
        probe: Probe = (TcpConnectProbe if kind == "tcp" else UdpEchoProbe)(host.strip("[]"), int(port))
        out.setdefault(names[cls], []).append(probe)
    return out


def build_monitor(args: argparse.Namespace, spec: TenantSpec, classids: Sequence[int]) -> Monitor:
    """The monitor the arguments describe (no netlink at all in a dry run)."""
    sources: dict[str, VmSource] = {vm: CgroupV2Source(path, args.cgroup_root)
                                    for vm, path in _pairs(args.cgroup, "--cgroup").items()}  # fmt: skip
    for vm, pid in _pairs(args.pid, "--pid").items():
        sources[vm] = ProcPidSource(int(pid), args.proc_root)
    host = HostSampler(spec, sources) if sources else None
    app = AppMetrics(spec, args.app_socket) if args.app_socket else None
    probe_map = _probes(spec, args.probe)
    probes = ProbeScheduler(probe_map, netns=args.netns).start() if probe_map else None
    base = tuple(args.base_delay_ms)
    config = MonitorConfig(base_delay_ms=base, labels={"interfaces": list(args.iface), "netns": args.netns})
    if args.dry_run:
        return Monitor(spec, NullClassStats(), classids, probes=probes, host=host, app=app, config=config)
    stats = NetlinkClassStats(args.iface, netns=args.netns)
    return Monitor(spec, stats, classids, rtt=SockDiagRtt(args.netns), probes=probes, host=host, app=app,
                   config=config)  # fmt: skip


@dataclass
class RunTotals:
    """What the summary needs of every step, kept as running totals: an agent runs for months at 10 Hz."""

    steps: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    reward: float = 0.0

    def add(self, rec: StepRecord) -> None:
        """Count one step."""
        self.steps += 1
        self.modes[rec.mode.value] += 1
        self.reward += rec.reward


def _summary(totals: RunTotals, loop: ControlLoop, backend: KernelBackend,
             updater: ModelUpdater | None) -> dict[str, Any]:  # fmt: skip
    return {
        "tenant": loop.spec.name,
        "steps": totals.steps,
        "modes": dict(totals.modes),
        "fallbacks": sum(
            s.value for m in loop.metrics.fallbacks.collect() for s in m.samples if s.name.endswith("_total")
        ),
        "mean_reward": totals.reward / totals.steps if totals.steps else None,
        "policy": loop.policy.name,
        "recorded_operations": recorded_operations(backend),
        **({"model_update": updater.summary()} if updater is not None else {}),
    }  # fmt: skip


def recorded_operations(backend: KernelBackend) -> int | None:
    """Operations a dry run's recording backend took; None on the kernel."""
    log = getattr(getattr(backend.enforcer, "backend", None), "log", None)
    return len(log) if log is not None else None


def loop_config(args: argparse.Namespace, interval_s: float) -> LoopConfig:
    """The loop's interval and watchdog (--sla-threshold, --recover-intervals)."""
    return LoopConfig(interval_s=interval_s, watchdog=WatchdogConfig(sla_threshold=sla_threshold(args),
                      recover_intervals=args.recover_intervals))  # fmt: skip


def build_policy(args: argparse.Namespace, spec: TenantSpec, rules: ShapingPlan,
                 rules_name: str | None = None) -> ControlPolicy:
    """The policy --policy names (with --checkpoint, --epsilon, --sample for an agent).

    Args:
        rules: the static rules (what --policy rules runs).
        rules_name: the name of that policy (default ``rules:`` and the --rules baseline).
    """
    kind = args.policy or ("checkpoint" if args.checkpoint else "rules")
    if kind == "checkpoint":
        if not args.checkpoint:
            raise ValueError("--policy checkpoint needs --checkpoint PATH")
        return ModelPolicy.from_checkpoint(args.checkpoint, spec, epsilon=args.epsilon, deterministic=not args.sample)
    if args.checkpoint:
        raise ValueError(f"--checkpoint runs an agent: it does not go with --policy {kind}")
    if kind == "adaptive_heuristic":
        return HeuristicControlPolicy(spec)
    return StaticPolicy(spec, rules, name=rules_name or f"rules:{args.rules}")


def sla_threshold(args: argparse.Namespace) -> float:
    """The watchdog's SLA threshold: --sla-threshold, else 0.5, or 1 (no SLA fallback) for adaptive_heuristic.

    The SLA fallback guards against a learned policy that degrades the SLAs; the heuristic's rules act on
    the SLAs themselves, and during a path outage, when most classes miss them, falling back would route
    them over the failed path again.
    """
    if args.sla_threshold is not None:
        return float(args.sla_threshold)
    return 1.0 if args.policy == "adaptive_heuristic" else DEFAULT_SLA_THRESHOLD


@dataclass(frozen=True)
class AgentSetup:
    """What the arguments say about the tenant, before anything touches the kernel."""

    scenario: ScenarioConfig
    spec: TenantSpec
    rules: ShapingPlan
    """The static rules (the watchdog's fallback), as the --rules baseline gives them."""
    kernel: KernelSetup
    interval_s: float
    """Control interval, seconds (--interval-ms, else the scenario's)."""

    @property
    def static_plan(self) -> ShapingPlan:
        """The static rules as the loop applies them in fallback: through the guard, with the default envelope."""
        return Guard(self.spec, EnvelopeConfig(), rules=self.rules).clamp(self.rules).plan


def agent_setup(args: argparse.Namespace) -> AgentSetup:
    """The tenant, its static rules, interfaces and interval from the parsed arguments (ValueError when wrong)."""
    if args.service:
        # Only fedshape-supervise gets here with --service: its static rules would have to come from the service.
        raise ValueError("an agent run from the rules service (--service) has no static rules in a file to fall back "
                         "to: run it without fedshape-supervise")
    if not args.tenant_config:
        raise ValueError("give --tenant-config FILE (the tenant's scenario), or --service HOST:PORT --tenant NAME")
    scenario = load_scenario(args.tenant_config)
    spec = _pick_tenant(scenario, args.tenant)
    if len(args.iface) != len(spec.paths):
        raise ValueError(f"tenant {spec.name!r} has {len(spec.paths)} paths {list(spec.paths)}: give --iface "
                         f"{len(spec.paths)} times (got {args.iface})")  # fmt: skip
    rules = get_baseline(args.rules).plan(spec)
    interval = (args.interval_ms or scenario.control_interval_ms) / 1e3
    if args.gateway and len(args.gateway) != len(args.iface):
        raise ValueError(f"give --gateway once per --iface ({len(args.iface)}), got {args.gateway}")
    kernel = KernelSetup(tuple(args.iface), args.netns, tuple(args.gateway))
    return AgentSetup(scenario, spec, rules, kernel, interval)


def update_config(args: argparse.Namespace) -> UpdateConfig | None:
    """The gate and rollback settings of --model-inbox (ValueError when out of range); None without it."""
    if not args.model_inbox:
        return None
    gate = GateConfig(margin=args.gate_margin, seeds=args.gate_seeds, steps=args.gate_steps)
    return UpdateConfig(gate=gate, rollback_intervals=args.rollback_intervals, rollback_margin=args.rollback_margin,
                        epsilon=args.epsilon, deterministic=not args.sample)  # fmt: skip


def build_updater(args: argparse.Namespace, config: UpdateConfig, scenario: ScenarioConfig, static_plan: ShapingPlan,
                  loop: ControlLoop) -> ModelUpdater:  # fmt: skip
    """The model updater of --model-inbox for `loop`'s tenant.

    Args:
        config: the gate and rollback settings (`update_config`).
        scenario: the gate's twin: a scenario holding the tenant.
        static_plan: the static rules as the loop applies them in fallback (guarded).
    """
    gate = SafetyGate(scenario, loop.spec.name, static_plan, config.gate)
    return ModelUpdater(loop, ModelInbox(args.model_inbox), gate, config)


def run(args: argparse.Namespace, notifier: SdNotifier | None = None) -> dict[str, Any]:
    """Run the agent as the parsed arguments say; returns the summary printed at the end.

    Args:
        notifier: where heartbeats go (systemd or fedshape-supervise): READY before the first step,
            WATCHDOG after every step and every quarter interval while the loop waits, STOPPING at the
            end. SIGUSR1 (sent by the supervisor after it put the static rules in) makes the next apply
            re-read the kernel first.
    """
    setup = agent_setup(args)
    spec, rules, interval = setup.spec, setup.rules, setup.interval_s
    envelope = EnvelopeConfig()
    policy = build_policy(args, spec, rules)
    updates = update_config(args)
    enforcer, classids = make_enforcer(spec, setup.kernel, dry_run=args.dry_run)
    backend = KernelBackend(spec, build_monitor(args, spec, classids), enforcer, teardown_on_close=args.teardown)
    registry = CollectorRegistry()
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, registry=registry)
    config = loop_config(args, interval)
    store = (ExperienceStore(Path(args.experience), spec, segment_size=args.experience_segment)
             if args.experience else None)  # fmt: skip
    notifier = notifier or SdNotifier(None)

    def pacing_sleep(seconds: float) -> None:
        # Heartbeats from the loop's own thread while it waits for the next interval, so the longest
        # silence is one step's work and the supervisor's deadline can be one interval.
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, interval / 4))
            notifier.heartbeat()

    loop = ControlLoop(backend, policy, rules, envelope=envelope, store=store, config=config, sleep=pacing_sleep,
                       metrics=ControlMetrics(spec.name, [c.name for c in spec.classes], registry))  # fmt: skip
    totals = RunTotals()
    updater = build_updater(args, updates, setup.scenario, setup.static_plan, loop) if updates is not None else None

    def on_step(rec: StepRecord) -> None:
        totals.add(rec)
        if updater is not None:
            updater.on_step(rec)
        notifier.heartbeat()

    previous = {s: signal.signal(s, lambda *_: loop.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
    # The supervisor's "I put the static rules in": the next apply re-reads the kernel before planning.
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: backend.request_resync())
    try:
        # The static rules are the floor every fallback returns to: a plan the kernel cannot carry (a rate
        # too small for HTB, say) is a configuration error now, not ten failed intervals later.
        enforcer.plan(loop.guard.clamp(rules).plan)
        LOG.info("tenant %s: %s on %s (netns %s), interval %.0f ms%s", spec.name, policy.name, ",".join(args.iface),
                 args.netns or "-", interval * 1e3, " [dry run]" if args.dry_run else "")  # fmt: skip
        notifier.ready()  # the first step follows: from now on a silence is a hang
        if updater is not None:
            updater.start()
        loop.run(args.steps, on_step=on_step)
    finally:
        notifier.stopping()
        for s, h in previous.items():
            signal.signal(s, h)
        if updater is not None:
            updater.close()
        loop.close()
        notifier.close()
    return _summary(totals, loop, backend, updater)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, print a JSON summary; 2 on a configuration error, 1 when the rules service refuses
    the agent or cannot be reached."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.service:
            from shaping.service.agent_run import ServiceError, run_service

            try:
                summary = run_service(args, SdNotifier.from_environ(os.environ))
            except ServiceError as err:  # the service refused us or never answered: not a configuration error
                print(f"fedshape-agent: error: {one_line(err)}", file=sys.stderr)
                return 1
        else:
            summary = run(args, SdNotifier.from_environ(os.environ))
    except (ValueError, FileNotFoundError, LookupError, PermissionError) as err:
        print(f"fedshape-agent: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
