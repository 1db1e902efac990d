"""Model hand-over speed: from ``publish_model`` to the first control step under the new model, on the simulator.

``python -m experiments.bench_handover [--runs 5]`` prints one JSON object. The product's pieces run as the agent
runs them: a ControlLoop paced in real time at the scenario's interval over a SimBackend of the tenant, driven
from its own thread, and a ModelUpdater (ModelInbox, SafetyGate on the tenant's scenario with the agent's
default gate settings, rollback watch) fed from the loop's ``on_step``. The loop starts on the static rules;
each run publishes the committed pretrained universal model as a new version and waits until it controls and
its rollback watch has ended. Keys:

- ``publish_to_control_s``: per run, seconds from the call of publish_model to the end of the first step the
  new model decided; ``p50``, ``max``;
- ``gate_s``: per run, the gate's own time (candidate loaded and evaluated on the twin);
- ``steps``: steps run; ``late_steps``: overruns (a step's work past its interval, the schedule restarted);
  ``dropped_steps``: gaps of two intervals or more between consecutive steps; ``max_gap_s``;
  ``policy_stalls``: policy calls past the deadline; ``fallbacks``;
- ``targets``: p50 <= 2 s, no dropped and no late step; ``load_average_1m`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shaping.agents.envelope import EnvelopeConfig
from shaping.baselines import get_baseline
from shaping.control import ControlLoop, LoopConfig, SimBackend, StaticPolicy, StepRecord
from shaping.control.gate import GateConfig, SafetyGate
from shaping.control.guard import Guard
from shaping.control.handover import ModelInbox, publish_model
from shaping.control.update import ModelUpdater, UpdateConfig
from shaping.sim.scenarios import load_scenario

#: The committed pretrained universal model and its card.
MODEL = Path(__file__).resolve().parents[1] / "conf" / "models" / "universal.npz"


def _counter(loop: ControlLoop, name: str) -> float:
    return sum(s.value for m in loop.metrics.registry.collect() for s in m.samples if s.name == f"{name}_total")


def bench(scenario_name: str, tenant: str, runs: int, gate: GateConfig, rollback_intervals: int) -> dict[str, Any]:
    """Run the hand-over ``runs`` times; the measurements described in the module doc."""
    scenario = load_scenario(scenario_name)
    backend = SimBackend(scenario, tenant)
    spec = backend.spec
    rules = get_baseline("static_priority").plan(spec)
    interval = scenario.control_interval_ms / 1e3
    loop = ControlLoop(backend, StaticPolicy(spec, rules, name="rules"), rules,
                       config=LoopConfig(interval_s=interval, realtime=True))  # fmt: skip
    card = json.loads((MODEL.parent / "summary.json").read_text())
    directory = Path(tempfile.mkdtemp(prefix="fedshape-handover-"))
    twin = SafetyGate(scenario, spec.name, Guard(spec, EnvelopeConfig(), rules=rules).clamp(rules).plan, gate)
    updater = ModelUpdater(loop, ModelInbox(directory), twin, UpdateConfig(gate=gate,
                           rollback_intervals=rollback_intervals))  # fmt: skip
    stamps: list[float] = []
    lock = threading.Lock()

    def on_step(rec: StepRecord) -> None:
        updater.on_step(rec)
        with lock:
            stamps.append(time.monotonic())

    worker = threading.Thread(target=loop.run, kwargs={"on_step": on_step}, name="fedshape-loop")
    updater.start()  # the rules and the policy in force on the twin, as the agent does at start
    worker.start()
    while updater.busy:
        time.sleep(0.05)
    first_step, latencies, gate_s = len(stamps), [], []
    for version in range(1, runs + 1):
        t0 = time.monotonic()
        publish_model(directory, MODEL, card, version)
        while not updater.swap_steps or updater.swap_steps[-1][0] != version:
            time.sleep(0.005)
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"version {version} did not take control within 60 s: {updater.summary()}")
        step = updater.swap_steps[-1][1]
        with lock:
            latencies.append(stamps[step] - t0)
        gate_s.append(updater.verdicts[-1][1].seconds)
        while updater.busy:  # the rollback watch
            time.sleep(0.05)
    loop.stop()
    worker.join()
    updater.close()
    loop.close()
    shutil.rmtree(directory, ignore_errors=True)
    gaps = [b - a for a, b in zip(stamps[first_step:], stamps[first_step + 1 :], strict=False)]
    return {
        "scenario": scenario.name, "tenant": spec.name, "interval_s": interval, "runs": runs,
        "gate": {"seeds": gate.seeds, "steps": gate.steps, "margin": gate.margin},
        "publish_to_control_s": {"p50": statistics.median(latencies), "max": max(latencies),
                                 "runs": [round(x, 3) for x in latencies]},
        "gate_s": [round(x, 3) for x in gate_s],
        "steps": len(stamps), "late_steps": _counter(loop, "fedshape_agent_overruns"),
        "dropped_steps": sum(g >= 2 * interval for g in gaps), "max_gap_s": max(gaps),
        "policy_stalls": loop.metrics.value("fedshape_agent_policy_calls_total", tenant=spec.name, outcome="stall")
        or 0.0,
        "fallbacks": _counter(loop, "fedshape_agent_fallbacks"),
        "verdicts": updater.summary()["gate"], "rollbacks": updater.rollbacks,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="default", help="scenario name or YAML")
    ap.add_argument("--tenant", default="gameco", help="the agent's tenant")
    ap.add_argument("--runs", type=int, default=5, help="versions published, one after another")
    ap.add_argument("--gate-seeds", type=int, default=GateConfig.seeds)
    ap.add_argument("--gate-steps", type=int, default=GateConfig.steps)
    ap.add_argument("--rollback-intervals", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    out = bench(args.scenario, args.tenant, args.runs, GateConfig(seeds=args.gate_seeds, steps=args.gate_steps),
                args.rollback_intervals)  # fmt: skip
    p50 = out["publish_to_control_s"]["p50"]
    out["targets"] = {"p50_publish_to_control_le_2s": p50 <= 2.0,
                      "no_dropped_or_late_steps": out["dropped_steps"] == 0 and out["late_steps"] == 0}  # fmt: skip
    out["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    out["cpus"] = os.cpu_count()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
