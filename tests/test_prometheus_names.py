"""The agent's and the rules service's Prometheus expositions follow Prometheus's naming rules (and promtool's)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shaping.control.metrics import ControlMetrics
from shaping.service.exposition import service_registry
from shaping.service.telemetry import CallMetrics
from shaping.store import RulesStore
from tests.service.conftest import config

#: Unit suffixes Prometheus's conventions replace with base units (seconds, bytes, ratios).
NON_BASE = re.compile(r"_(ms|us|msec|milliseconds|mbps|kbps|bps|bits|kb|mb|percent|rate)(_|$)")


def _agent_text() -> str:
    m = ControlMetrics("acme", ["game", "web"])
    m.classes_observed([8.0, 2.0], [40.0, 5.0], [0.02, 0.0])
    m.step_seconds.labels("acme").observe(0.01)
    m.policy_seconds.labels("acme").observe(0.002)
    m.fallbacks.labels("acme", "policy stall").inc()
    m.steps.labels("acme", "adaptive").inc()
    m.gate_verdicts.labels("acme", "rejected", "worse_than_rules").inc()
    m.gate_seconds.labels("acme").observe(0.4)
    m.gate_sla_rate.labels("acme", "candidate").set(0.1)
    m.rollbacks.labels("acme").inc()
    return generate_latest(m.registry).decode()


@pytest.fixture
def service_text(tmp_path) -> str:
    store = RulesStore(tmp_path / "m.db")
    try:
        store.create_tenant("acme", 100.0)
        store.put_status("acme", {"reward": 0.75, "fallback": True, "sla_ok_fraction": 0.5,
                                  "classes": [{"name": "game", "loss": 0.02, "delay_p99_ms": 40.0,
                                               "delivered_mbps": 8.0}]})  # fmt: skip
        store.put_federation({"round": 4, "epsilon_spent": 2.5, "tenants": [{"tenant": "acme", "epsilon_spent": 1.0}]})
        registry = service_registry(store, config(), CollectorRegistry())
        calls = CallMetrics(registry)
        calls.requests.labels("/fedshape.v1.ClientService/GetRules", "OK").inc()
        calls.duration.labels("/fedshape.v1.ClientService/GetRules").observe(0.001)
        return generate_latest(registry).decode()
    finally:
        store.close()


def test_agent_metrics_are_in_base_units():
    text = _agent_text()
    values = {(s.name, s.labels.get("class")): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    assert values["fedshape_class_delivered_bytes_per_second", "game"] == pytest.approx(1e6)  # 8 Mbit/s
    assert values["fedshape_class_delay_p99_seconds", "game"] == pytest.approx(0.04)
    assert values["fedshape_class_loss_ratio", "game"] == pytest.approx(0.02)


@pytest.mark.parametrize("which", ["agent", "service"])
def test_names_follow_prometheus_conventions(which, service_text):
    text = _agent_text() if which == "agent" else service_text
    families = list(text_string_to_metric_families(text))
    assert families
    for fam in families:
        assert fam.name.startswith("fedshape_"), fam.name
        assert not NON_BASE.search(fam.name), f"{fam.name}: not in base units"
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name


@pytest.mark.parametrize("which", ["agent", "service"])
def test_promtool_check_metrics(which, service_text):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    text = _agent_text() if which == "agent" else service_text
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
