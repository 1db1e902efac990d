"""The watchdog's state machine and the deadline-bounded policy runner."""

from __future__ import annotations

import threading
import time

import pytest

from shaping.control import Mode, Outcome, PolicyRunner, Watchdog, WatchdogConfig
from shaping.control.policy import Decision


def test_error_falls_back_now_and_recovers_after_n_healthy():
    wd = Watchdog(WatchdogConfig(recover_intervals=2))
    assert wd.update(Outcome.OK, 0.0).mode is Mode.ADAPTIVE
    v = wd.update(Outcome.ERROR, 0.0, "ValueError: x")
    assert v.mode is Mode.FALLBACK and v.changed and v.reason == "policy error: ValueError: x"
    assert wd.update(Outcome.OK, 1.0).mode is Mode.FALLBACK  # SLA under the rules is not the policy's
    v = wd.update(Outcome.OK, 1.0)
    assert v.mode is Mode.ADAPTIVE and v.changed and v.reason == ""
    # a stall during recovery restarts the count
    wd.update(Outcome.STALL, None)
    wd.update(Outcome.OK, None)
    assert wd.update(Outcome.STALL, None).mode is Mode.FALLBACK
    assert wd.healthy_streak == 0


def test_sla_rule_uses_a_window_of_adaptive_intervals():
    wd = Watchdog(WatchdogConfig(sla_window=4, sla_min_samples=2, sla_threshold=0.5, recover_intervals=1))
    assert wd.update(Outcome.OK, 1.0).mode is Mode.ADAPTIVE  # one sample: below the minimum
    assert wd.update(Outcome.OK, 0.0).mode is Mode.ADAPTIVE  # mean 0.5: not above
    v = wd.update(Outcome.OK, 1.0)
    assert v.mode is Mode.FALLBACK and "0.67 > 0.50" in v.reason
    assert wd.update(Outcome.OK, 1.0).mode is Mode.ADAPTIVE  # recover_intervals=1; fresh window
    assert wd.sla_rate == 0.0


def test_config_is_checked():
    with pytest.raises(ValueError):
        WatchdogConfig(deadline_fraction=0)
    with pytest.raises(ValueError):
        WatchdogConfig(sla_window=2, sla_min_samples=3)


class _Policy:
    name = "p"

    def __init__(self, fn):
        self.fn = fn

    def decide(self, observed):
        return self.fn()


def test_runner_outcomes():
    r = PolicyRunner()
    d = Decision(plan=None, action=None)  # type: ignore[arg-type]
    assert r.call(_Policy(lambda: d), None, 1.0).decision is d  # type: ignore[arg-type]
    res = r.call(_Policy(lambda: 1 / 0), None, 1.0)  # type: ignore[arg-type]
    assert res.outcome is Outcome.ERROR and "ZeroDivisionError" in res.detail
    res = r.call(_Policy(lambda: "nope"), None, 1.0)  # type: ignore[arg-type]
    assert res.outcome is Outcome.ERROR and "not Decision" in res.detail
    gate = threading.Event()
    t0 = time.monotonic()
    res = r.call(_Policy(lambda: gate.wait(5) and d), None, 0.02)  # type: ignore[arg-type]
    assert res.outcome is Outcome.STALL and time.monotonic() - t0 < 0.5 and r.busy
    # one call in flight at most
    assert r.call(_Policy(lambda: d), None, 1.0).outcome is Outcome.STALL  # type: ignore[arg-type]
    r.reset()  # a swap abandons the stuck call
    assert r.call(_Policy(lambda: d), None, 1.0).outcome is Outcome.OK  # type: ignore[arg-type]
    gate.set()
