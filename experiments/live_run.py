"""One live federation from start to teardown: testbeds, agents, traffic, SuperLink and SuperNodes, the run.

``LiveRun`` is a context manager: whatever happens inside (a failure, Ctrl-C), leaving it stops the traffic,
the agents and every Flower process, and removes every namespace it created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.deploy_local import DeploymentError, LocalDeployment, NodeSpec
from experiments.live_report import round_rows
from experiments.live_tenants import (
    InboxWatch,
    TenantFiles,
    TrafficRecorder,
    agent_argv,
    agent_summary,
    node_config,
    tenant_scenario,
    workloads,
    write_scenario,
)
from experiments.processes import ProcessGroup
from shaping.testbed import fednet
from shaping.testbed.topology import PathLink, Testbed, TopologyConfig, testbed

if TYPE_CHECKING:
    from experiments.live_federation import LiveFederationConfig

log = logging.getLogger("experiments.live_federation")
REPO = Path(__file__).resolve().parents[1]
#: Seconds between two `flwr ls` once the ServerApp's record says the run ended.
POLL_S = 5.0
#: Seconds an agent gets after SIGTERM to finish its step, wait for a gate under way and print its summary (the
#: report's swaps and verdicts) before SIGKILL.
AGENT_GRACE_S = 60.0


class LiveRun:
    """The live federation's processes and namespaces (see the module docstring).

    Args:
        cfg: the settings.
        workdir: scenario files, experience stores, inboxes, PKI, Flower homes and every log.
        run_config: the Flower run config (experiments.live_federation.run_config).
        clock, sleep: the clock, for tests.
    """

    def __init__(self, cfg: LiveFederationConfig, workdir: Path, run_config: dict[str, Any], *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.cfg, self.workdir, self.run_config = cfg, workdir.resolve(), run_config
        self._clock, self._sleep = clock, sleep
        self._stack = contextlib.ExitStack()
        self.beds: list[Testbed] = []
        self.net = fednet.FedNetConfig(prefix=cfg.prefix, subnet_base=cfg.subnet_base + 5 * len(cfg.tenants),
                                       tenant_namespaces=tuple(f"{cfg.prefix}{i}-tenant" for i in
                                                               range(len(cfg.tenants))))  # fmt: skip
        self.files = {t.name: TenantFiles(self.workdir / t.name) for t in cfg.tenants}
        self.agents = ProcessGroup(self.workdir / "agents", clock=clock, sleep=sleep)
        self.traffic: list[TrafficRecorder] = []
        self.inboxes = InboxWatch({name: f.inbox for name, f in self.files.items()})
        self.scenarios: dict[str, Any] = {}

    # ---- setup and teardown ------------------------------------------------------------------------------------

    def __enter__(self) -> LiveRun:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        cfg = self.cfg
        path = PathLink(cfg.capacity_mbps, cfg.buffer_ms)
        fednet.teardown(self.net)  # a leftover of an interrupted run with the same prefix
        for i in range(len(cfg.tenants)):
            topo = TopologyConfig(prefix=f"{cfg.prefix}{i}", subnet_base=cfg.subnet_base + 5 * i, paths=(path, path))
            self.beds.append(self._stack.enter_context(testbed(topo)))
        self._stack.callback(fednet.teardown, self.net)
        fednet.build(self.net)
        log.info("built %d tenant testbeds and the federation's namespace %s (SuperLink %s)", len(self.beds),
                 self.net.namespace, self.net.superlink_addr)  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        for rec in self.traffic:
            rec.stop(timeout=self.cfg.segment_s + 30.0)
        self.agents.stop(grace=AGENT_GRACE_S)
        self._stack.close()  # the deployment (if started), then the namespaces, last in first out

    # ---- the run -----------------------------------------------------------------------------------------------

    def _start_agents(self) -> None:
        cfg = self.cfg
        steps = math.ceil((cfg.static_s + cfg.timeout_s + cfg.after_s + 60.0) / (cfg.interval_ms / 1e3))
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        for tb, tenant, work in zip(self.beds, cfg.tenants, workloads(cfg.tenants), strict=True):
            files = self.files[tenant.name]
            scenario = tenant_scenario(tb, work, tenant.name, cfg.interval_ms)
            self.scenarios[tenant.name] = scenario
            write_scenario(scenario, files.scenario)
            argv = agent_argv(tb, files, steps=steps, experience_segment=cfg.experience_segment,
                              gate_seeds=cfg.gate_seeds, gate_steps=cfg.gate_steps,
                              rollback_intervals=cfg.rollback_intervals, python=sys.executable)  # fmt: skip
            self.agents.spawn(tenant.name, ["ip", "netns", "exec", tb.names.tenant_ns, *argv], env, cwd=REPO)
        log.info("agents started (static rules, experience every %d steps, model inboxes watched)",
                 cfg.experience_segment)  # fmt: skip

    def _start_traffic(self) -> None:
        cfg = self.cfg
        total = cfg.static_s + cfg.timeout_s + cfg.after_s
        bound = math.ceil(total / cfg.segment_s) + 1
        for tb, work in zip(self.beds, workloads(cfg.tenants), strict=True):
            rec = TrafficRecorder(tb, work, cfg.segment_s, cfg.warmup_s, bound)
            self.traffic.append(rec.start())

    def _wait(self, seconds: float, what: str) -> None:
        end = self._clock() + seconds
        while (left := end - self._clock()) > 0:
            self._check_agents()
            self.inboxes.poll()
            self._sleep(min(1.0, left))
        log.info("%s: %s", what, self._progress())

    def _check_agents(self) -> None:
        for tenant in self.cfg.tenants:
            if (code := self.agents.poll(tenant.name)) is not None:
                tail = self.agents.log(tenant.name)[-1500:]
                raise DeploymentError(f"the agent of {tenant.name} exited with {code}:\n{tail}")

    def _progress(self) -> str:
        segs = ", ".join(f"{t.name} {len(r.segments)}" for t, r in zip(self.cfg.tenants, self.traffic, strict=True))
        versions = ", ".join(f"{k} v{v}" for k, v in self.inboxes.versions().items())
        return f"segments measured: {segs}; models published: {versions}"

    def _deployment(self) -> LocalDeployment:
        names = {"superlink": self.net.namespace, "flwr": self.net.namespace}
        names |= {f"node-{t.name}": tb.names.tenant_ns for t, tb in zip(self.cfg.tenants, self.beds, strict=True)}
        dep = LocalDeployment(self.workdir / "flower", host=self.net.superlink_addr, port=self.cfg.port,
                              cli_timeout=max(120.0, self.cfg.timeout_s / 3), launcher=fednet.in_namespace(names),
                              connect=fednet.connector(self.net.namespace))  # fmt: skip
        self._stack.enter_context(dep)
        return dep

    def _federate(self) -> dict[str, Any]:
        nodes = [NodeSpec(f"node-{t.name}", node_config(t.name, self.files[t.name])) for t in self.cfg.tenants]
        dep = self._deployment()
        dep.make_pki(nodes)
        results_file = self.workdir / "flower" / "fl_rounds.json"
        staged = dep.stage_app(REPO, {"output.results_file": str(results_file)})
        # On a host loaded far beyond its cores each Flower process takes minutes to start: timeout_s bounds it.
        dep.start_superlink(timeout=self.cfg.timeout_s)
        node_ids = dep.register(nodes)
        for i, node in enumerate(nodes):
            dep.start_supernode(i, node)
        dep.wait_online([n.name for n in nodes], timeout=self.cfg.timeout_s)
        log.info("SuperLink up over TLS, %d SuperNodes authenticated (node ids %s)", len(nodes),
                 sorted(node_ids.values()))  # fmt: skip
        run_id = dep.run_app(staged, self.run_config)
        log.info("run %d started: %d rounds, SecAgg+ with distributed DP", run_id, self.cfg.rounds)
        self._follow(results_file)
        # The ServerApp's record says it ended; Flower's own status decides (flwr 1.42's `flwr run` exits 0
        # whatever becomes of the run).
        status = str(dep.wait_run(run_id, timeout=self.cfg.timeout_s, poll=POLL_S)["status"])
        log.info("run %d %s; %s", run_id, status, self._progress())
        record = json.loads(results_file.read_text()) if results_file.is_file() else {}
        rounds = record.get("rounds", [])
        return {"run_id": run_id, "status": status, "node_ids": node_ids, "rounds_record": rounds,
                "epsilon": next((r["epsilon"] for r in reversed(rounds) if r.get("epsilon") is not None), None),
                "delta": self.run_config.get("privacy.delta", 1e-5)}  # fmt: skip

    def _follow(self, results_file: Path) -> None:
        """Progress lines until the ServerApp's record says the run ended (each `flwr ls` would start a Python
        process of its own: tens of seconds on a loaded host), bounded by timeout_s."""
        deadline, last, said = self._clock() + self.cfg.timeout_s, self._clock(), ""
        while self._clock() < deadline:
            self._check_agents()
            self.inboxes.poll()
            try:
                record = json.loads(results_file.read_text())
            except (OSError, ValueError):
                record = {}  # not written yet, or being replaced
            done = len(record.get("rounds", []))
            line = f"rounds done {done}/{self.cfg.rounds}; {self._progress()}"
            if line != said or self._clock() - last >= 30.0:
                log.info("%s", line)
                said, last = line, self._clock()
            if record.get("status", "running") != "running":
                return
            self._sleep(1.0)

    def run(self) -> dict[str, Any]:
        """Agents and traffic under the static rules, the federated run, traffic under the last models; the
        results by tenant and round."""
        cfg = self.cfg
        self._start_agents()
        self._start_traffic()
        self._wait(cfg.static_s, f"{cfg.static_s:.0f} s under the static rules")
        federation = self._federate()
        self._wait(cfg.after_s, f"run {federation['status']}; {cfg.after_s:.0f} s under the last models")
        for rec in self.traffic:
            rec.stop(timeout=cfg.segment_s + 30.0)
        self.agents.stop(grace=AGENT_GRACE_S)
        tenants = {}
        for tenant, rec in zip(cfg.tenants, self.traffic, strict=True):
            summary = agent_summary((self.agents.log_dir / f"{tenant.name}.log").read_text(errors="replace"))
            segments = [{"start": s.start, "end": s.end, "classes": s.classes} for s in rec.segments]
            tenants[tenant.name] = {
                "rounds": round_rows(cfg.rounds, segments, self.inboxes.published[tenant.name], summary,
                                     self.scenarios[tenant.name].tenants[0].classes),
                "published": self.inboxes.published[tenant.name],
                "agent": summary,
                "segments": segments,
                "traffic_errors": rec.errors,
            }  # fmt: skip
        return {"federation": federation, "tenants": tenants}
