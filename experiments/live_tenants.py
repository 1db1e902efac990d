"""The tenants of the live federation: each one's scenario file, agent command, traffic segments and model inbox.

A tenant is a namespaced testbed (shaping.testbed.topology) with its own workload. Its agent is
``python -m shaping.control`` inside the tenant's namespace, recording experience and watching a model inbox;
its traffic runs as back-to-back segments of the testbed's generators (shaping.testbed.runner), each measured
by the generators themselves (shaping.testbed.measure), so every segment can be matched with the model that
controlled the kernel while it ran.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shaping.config import ScenarioConfig
from shaping.control.handover import read_current
from shaping.testbed import scenario as S
from shaping.testbed.measure import measure
from shaping.testbed.runner import run_flows
from shaping.testbed.topology import Testbed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantFiles:
    """Where one tenant's files live: its scenario, the agent's experience store and model inbox, the node state."""

    root: Path

    @property
    def scenario(self) -> Path:
        """The tenant's scenario YAML (the agent's --tenant-config, the node's `scenario`)."""
        return self.root / "scenario.yaml"

    @property
    def experience(self) -> Path:
        """The agent's experience store (the node's `experience-store`)."""
        return self.root / "experience"

    @property
    def inbox(self) -> Path:
        """The agent's model inbox (the node's `model-inbox`)."""
        return self.root / "inbox"

    @property
    def state(self) -> Path:
        """The node's round-to-round state (`state-file`)."""
        return self.root / "fl-state.json"


def tenant_scenario(tb: Testbed, work: S.Workload, name: str, interval_ms: float) -> ScenarioConfig:
    """The testbed's scenario with its tenant renamed (the name is the tenant's identity in the federation)."""
    scenario = S.testbed_scenario(tb.cfg, work, control_interval_ms=interval_ms)
    scenario.tenants = [dataclasses.replace(scenario.tenants[0], name=name)]
    scenario.name = f"live-{name}"
    return scenario


def write_scenario(scenario: ScenarioConfig, path: Path) -> Path:
    """Write a scenario as the YAML shaping.sim.scenarios.load_scenario reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(asdict(scenario), sort_keys=False))
    return path


def agent_argv(tb: Testbed, files: TenantFiles, *, steps: int, experience_segment: int, gate_seeds: int,
               gate_steps: int, rollback_intervals: int, python: str = sys.executable) -> list[str]:  # fmt: skip
    """The tenant's agent, run inside its namespace (the caller wraps it in `ip netns exec`): the static rules
    until a model arrives, experience recorded, the model inbox watched; bounded by ``steps`` intervals."""
    argv = [python, "-m", "shaping.control", "--tenant-config", str(files.scenario)]
    for link, gateway in zip(tb.names.tenant_links, tb.names.path_gateways, strict=True):
        argv += ["--iface", link, "--gateway", gateway]
    return [
        *argv, "--policy", "rules", "--steps", str(steps), "--experience", str(files.experience),
        "--experience-segment", str(experience_segment), "--model-inbox", str(files.inbox),
        "--gate-seeds", str(gate_seeds), "--gate-steps", str(gate_steps),
        "--rollback-intervals", str(rollback_intervals), "--base-delay-ms", "0.1", "--base-delay-ms", "0.1",
        "--teardown",
    ]  # fmt: skip


@dataclass
class Segment:
    """One traffic segment of a tenant: when it ran (wall clock) and what its generators measured, by class."""

    start: float
    end: float
    classes: dict[str, dict[str, Any]]


@dataclass
class TrafficRecorder:
    """Runs a tenant's traffic as back-to-back segments in a thread until stopped (at most ``max_segments``).

    Args:
        tb: the tenant's testbed.
        work: its workload.
        segment_s: each segment's length (the generators stop by themselves).
        warmup_s: start of each segment left out of its measurements.
        max_segments: the bound on the loop.
        wall_clock: seconds since the epoch (the agents' swap times are wall-clock times).
    """

    tb: Testbed
    work: S.Workload
    segment_s: float
    warmup_s: float
    max_segments: int
    wall_clock: Callable[[], float] = time.time
    segments: list[Segment] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        flows = S.flows(self.work)
        for _ in range(self.max_segments):
            if self._stop.is_set():
                return
            marks: dict[str, float] = {}

            def started(_elapsed: float, marks: dict[str, float] = marks) -> None:
                marks["start"] = self.wall_clock()

            try:
                run = run_flows(self.tb, flows, self.segment_s, during=started)
                ms = measure(run, flows, self.warmup_s)
            except Exception as err:  # one bad segment must not end the tenant's traffic
                # Besides TestbedError, pyroute2's namespace helpers fail on a host loaded far beyond its cores
                # (TimeoutError "could not start netns socket", RuntimeError "child process is dead").
                self.errors.append(f"{type(err).__name__}: {err}"[-600:])
                log.warning("%s: traffic segment failed: %s", self.tb.names.tenant_ns, self.errors[-1])
                continue
            start = marks["start"] + self.warmup_s
            self.segments.append(Segment(start, marks["start"] + self.segment_s,
                                         {k: v.as_dict() for k, v in ms.items()}))  # fmt: skip

    def start(self) -> TrafficRecorder:
        """Start the segments in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name=f"traffic-{self.tb.names.tenant_ns}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float) -> None:
        """Let the segment under way finish (it is bounded), start no other, and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class InboxWatch:
    """Records when each model version appeared in each tenant's inbox (``published_at`` of its pointer).

    The pointer names only the newest version, so the watcher polls it often enough to see each round's.
    """

    def __init__(self, inboxes: dict[str, Path]) -> None:
        self.inboxes = inboxes
        self.published: dict[str, dict[int, float]] = {name: {} for name in inboxes}

    def poll(self) -> None:
        """Read every pointer once."""
        for name, inbox in self.inboxes.items():
            try:
                current = read_current(inbox)
            except (OSError, ValueError):
                continue  # being replaced: the next poll sees it
            if current is not None:
                self.published[name].setdefault(int(current["version"]), float(current["published_at"]))

    def versions(self) -> dict[str, int]:
        """The newest version seen per tenant (0: none yet)."""
        return {name: max(v, default=0) for name, v in self.published.items()}


def agent_summary(log_text: str) -> dict[str, Any] | None:
    """The agent's exit summary: the last line of its output that is a JSON object (None if it printed none)."""
    import json

    for line in reversed(log_text.splitlines()):
        if line.startswith("{"):
            try:
                out = json.loads(line)
            except ValueError:
                continue
            if isinstance(out, dict):
                return out
    return None


def node_config(name: str, files: TenantFiles) -> dict[str, str]:
    """The tenant's SuperNode config: its identity and scenario, its agent's experience and inbox, its state."""
    return {"tenant": name, "scenario": str(files.scenario), "experience-store": str(files.experience),
            "model-inbox": str(files.inbox), "state-file": str(files.state)}  # fmt: skip


def workloads(tenants: Sequence[Any]) -> list[S.Workload]:
    """The testbed workload of each configured tenant (gaming players, transaction rate, bulk flows)."""
    return [S.Workload(gaming_players=t.gaming_players, txn_rate_hz=t.txn_rate_hz, bulk_flows=t.bulk_flows)
            for t in tenants]  # fmt: skip
