"""Model updates of a running loop: rollback on a degraded SLA series; two published versions on the simulator."""

from __future__ import annotations

import json
import time

import numpy as np

from shaping.baselines import get_baseline
from shaping.control.gate import GateConfig, GateVerdict, SafetyGate
from shaping.control.handover import ModelInbox, ModelUpdate, publish_model
from shaping.control.loop import ControlLoop, LoopConfig, StepRecord
from shaping.control.policy import ControlPolicy, ScriptedPolicy, StaticPolicy
from shaping.control.sim_backend import SimBackend
from shaping.control.update import ModelUpdater, RollbackMonitor, UpdateConfig
from shaping.control.watchdog import WatchdogConfig
from tests.control.conftest import FakeBackend, small_scenario
from tests.control.test_gate import PRETRAINED, harmful_weights

CARD = json.loads((PRETRAINED.parent / "summary.json").read_text())


def test_rollback_monitor_compares_the_intervals_after_with_those_before():
    mon = RollbackMonitor(intervals=3, margin=0.1)
    for r in (0.0, 0.5, 0.0, 0.0, None):  # only the last 3 count as 'before'; None (no SLA class) is skipped
        assert mon.add(r) is None
    mon.start()
    assert mon.watching and mon.before == [0.5, 0.0, 0.0]
    assert mon.add(0.3) is None and mon.add(0.3) is None
    assert mon.add(0.3) is True and not mon.watching  # 0.3 > 0.1667 + 0.1
    mon.start()
    assert [mon.add(0.3) for _ in range(3)] == [None, None, False]  # 0.3 vs 0.3: kept


class _AcceptAll(SafetyGate):
    """A gate that accepts everything at once (the rollback is under test, not the twin)."""

    def __init__(self) -> None:
        pass

    def check(self, candidate: ControlPolicy, in_force: ControlPolicy) -> GateVerdict:
        return GateVerdict(True, "ok", 0.0, 0.0, 0.0, 0.0)


def _wait_idle(updater: ModelUpdater) -> None:
    if updater._thread is not None:
        updater._thread.join(10.0)


def test_a_model_that_degrades_the_slas_is_rolled_back(spec, tmp_path):
    backend = FakeBackend(spec)
    rules = get_baseline("static_priority").plan(spec)
    start = StaticPolicy(spec, rules, name="start")
    # SLA fallback off: the loop must keep the new model so that the rollback, not the watchdog, acts.
    loop = ControlLoop(backend, start, rules, config=LoopConfig(realtime=False,
                       watchdog=WatchdogConfig(sla_threshold=1.0)))  # fmt: skip
    new = ScriptedPolicy(spec, lambda observed: rules, name="new")
    updater = ModelUpdater(loop, ModelInbox(tmp_path), _AcceptAll(), UpdateConfig(rollback_intervals=5),
                           load=lambda update: new)  # fmt: skip
    records: list[StepRecord] = []

    def step() -> None:
        records.append(loop.step())
        updater.on_step(records[-1])

    for _ in range(6):
        step()
    publish_model(tmp_path, [np.zeros(2, dtype=np.float32)], CARD, 1)
    step()  # polled: the gate thread accepts and hands the model to the loop
    _wait_idle(updater)
    step()
    assert loop.policy is new and updater.version == 1 and updater.previous is start
    backend.violating = True  # every SLA class breaks its SLA from now on
    for _ in range(5):
        step()
    assert updater.rollbacks == 1
    step()  # the rollback's swap is taken at the next step
    assert loop.policy is start and updater.version is None
    assert [r.policy for r in records].count("new") == 6  # no step was skipped in either swap
    assert loop.metrics.value("fedshape_agent_rollbacks_total", tenant=spec.name) == 1
    assert loop.metrics.value("fedshape_agent_model_version", tenant=spec.name) == 0
    assert loop.metrics.value("fedshape_agent_gate_verdicts_total", tenant=spec.name, verdict="accepted",
                              reason="ok") == 1  # fmt: skip
    summary = updater.summary()
    assert summary["rollbacks"] == 1 and summary["gate"] == {"accepted": 1}
    assert [{k: v for k, v in sw.items() if k != "at"} for sw in summary["swaps"]] == [
        {"version": 1, "step": 7}, {"version": 0, "step": 13}]
    assert [sw["at"] for sw in summary["swaps"]] == sorted(sw["at"] for sw in summary["swaps"])


def test_the_agent_takes_a_sound_version_and_refuses_a_harmful_one_on_the_simulator(tmp_path):
    scenario = small_scenario()
    backend = SimBackend(scenario, "acme")
    rules = get_baseline("static_priority").plan(backend.spec)
    loop = ControlLoop(backend, StaticPolicy(backend.spec, rules, name="rules"), rules,
                       config=LoopConfig(realtime=False))  # fmt: skip
    gate = SafetyGate(scenario, "acme", rules, GateConfig(seeds=2, steps=40))
    inbox = ModelInbox(tmp_path / "inbox")
    updater = ModelUpdater(loop, inbox, gate, UpdateConfig(rollback_intervals=5, rollback_margin=0.5))
    updater.start()
    records: list[StepRecord] = []

    def run_until(done, limit_s: float = 30.0) -> None:
        end = time.monotonic() + limit_s
        while not done() and time.monotonic() < end:
            records.append(loop.step())
            updater.on_step(records[-1])
            time.sleep(0.002)  # a simulated interval is much shorter than a real one: leave the gate some CPU

    publish_model(tmp_path / "inbox", PRETRAINED, CARD, 1)
    run_until(lambda: updater.version == 1 and not updater.busy)
    assert loop.policy.name.startswith("global:") and updater.version == 1
    model_v1 = loop.policy
    harmful = harmful_weights(tmp_path)
    publish_model(tmp_path / "inbox", harmful, CARD, 2)
    run_until(lambda: len(updater.verdicts) == 2 and not updater.busy)
    assert loop.policy is model_v1 and updater.version == 1
    (_, first), (_, second) = updater.verdicts
    assert first.accepted and not second.accepted and second.reason == "worse_than_policy"
    assert [r.step for r in records] == list(range(len(records)))
    updater.close()
    summary = updater.summary()
    assert summary["model_version"] == 1 and summary["gate"] == {"accepted": 1, "rejected:worse_than_policy": 1}
    json.dumps(summary)  # JSON-ready for the exit summary


def test_load_errors_are_rejected_with_their_reason(spec, tmp_path):
    rules = get_baseline("static_priority").plan(spec)
    loop = ControlLoop(FakeBackend(spec), StaticPolicy(spec, rules), rules, config=LoopConfig(realtime=False))

    def broken(update: ModelUpdate) -> ControlPolicy:
        raise ValueError(f"{update.path.name} does not fit")

    updater = ModelUpdater(loop, ModelInbox(tmp_path), _AcceptAll(), load=broken)
    publish_model(tmp_path, [np.zeros(2, dtype=np.float32)], CARD, 4)
    updater.on_step(loop.step())
    _wait_idle(updater)
    (version, verdict), = updater.verdicts
    assert version == 4 and verdict.reason == "load_error" and "model-4.npz does not fit" in verdict.detail
    assert updater.version is None and updater.summary()["gate"] == {"rejected:load_error": 1}


def test_state_keeps_install_times_and_the_last_rollback_on_the_wall_clock(spec, tmp_path):
    backend = FakeBackend(spec)
    rules = get_baseline("static_priority").plan(spec)
    loop = ControlLoop(backend, StaticPolicy(spec, rules, name="start"), rules, config=LoopConfig(
        realtime=False, watchdog=WatchdogConfig(sla_threshold=1.0)))
    wall = iter(range(100, 10_000, 100))  # 100, 200, ... at each reading
    updater = ModelUpdater(loop, ModelInbox(tmp_path), _AcceptAll(), UpdateConfig(rollback_intervals=3),
                           load=lambda update: ScriptedPolicy(spec, lambda observed: rules, name=f"v{update.version}"),
                           wall_clock=lambda: float(next(wall)))  # fmt: skip
    state = updater.state()
    assert (state.version, state.installed_at, state.last_verdict, state.rollbacks) == (None, None, None, 0)

    def publish_and_take(version: int) -> None:
        publish_model(tmp_path, [np.zeros(2, dtype=np.float32)], CARD, version)
        updater.on_step(loop.step())  # polled: the gate accepts
        _wait_idle(updater)
        for _ in range(4):  # the swap, and a rollback watch of 3 quiet intervals
            updater.on_step(loop.step())

    publish_and_take(1)  # verdict at 100, installed at 200
    publish_and_take(2)  # verdict at 300, installed at 400
    assert updater.state().installed_at == 400.0
    backend.violating = True
    publish_model(tmp_path, [np.zeros(2, dtype=np.float32)], CARD, 3)
    updater.on_step(loop.step())
    _wait_idle(updater)  # verdict at 500
    for _ in range(5):  # installed at 600, then 3 degraded intervals: rolled back at 700
        updater.on_step(loop.step())
    state = updater.state()
    assert state.rollbacks == 1 and state.last_rollback == (3, 2, 700.0)
    assert state.version == 2 and state.installed_at == 400.0  # version 2 again, as installed the first time
    version, verdict, at = state.last_verdict
    assert (version, verdict.accepted, at) == (3, True, 500.0) and state.counts == {"accepted": 3}
