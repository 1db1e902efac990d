"""The live federation's config, report and tenant helpers, without root (the run itself: tests/testbed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments import live_federation
from experiments.config import ConfigError, to_typed
from experiments.live_federation import LiveFederationConfig, run_config
from experiments.live_report import markdown_report, round_rows, version_at, violations, write_plots
from experiments.live_tenants import InboxWatch, TenantFiles, agent_summary, node_config
from shaping.config import ClassConfig, QoSConfig
from shaping.control.handover import publish_model

CONF = Path(__file__).resolve().parents[2] / "conf"
REPO = CONF.parent
GAMING = ClassConfig(name="gaming", app="gaming", qos=QoSConfig(max_p99_ms=20.0, max_loss=0.01))
TXN = ClassConfig(name="transactions", app="transactions", qos=QoSConfig(app_floor=0.95))
BULK = ClassConfig(name="bulk", app="bulk")


@pytest.fixture(scope="module")
def hydra_conf():
    live_federation.register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def test_the_default_config_composes_and_sets_secagg_with_dp(hydra_conf):
    cfg = to_typed(compose("live_federation"), LiveFederationConfig)
    assert len(cfg.tenants) == 3 and cfg.rounds == 3
    rc = run_config(cfg)
    assert rc["privacy.secure_aggregation"] is True and rc["privacy.mode"] == "distributed"
    assert rc["fl.min_fit_clients"] == rc["fl.min_available_clients"] == 3
    assert Path(rc["init.weights"]).is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tenants=[{name: a}, {name: b}]"], "tenants: the live federation needs at least 3, got 2"),
        (["rounds=0"], "rounds must be >= 1, got 0"),
        (["warmup_s=10"], "need 0 <= warmup_s < segment_s"),
        (["static_s=2"], "static_s and after_s must be >= segment_s"),
        (["subnet_base=250"], "leave 10.200.0.0/16"),
        (["prefix=toolong"], "at most 5 letters or digits"),
        (["tenants.0.bulk_flows=0"], "every class must send"),
    ],
)
def test_bad_values_are_one_line_errors(hydra_conf, overrides, message):
    with pytest.raises(ConfigError) as info:
        to_typed(compose("live_federation", overrides=overrides), LiveFederationConfig)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the refusal without root")
def test_without_root_it_says_why_in_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.live_federation", f"hydra.run.dir={tmp_path}"], capture_output=True,
        text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == ["live_federation: the testbed needs root (network namespaces, tc, "
                                                "nftables)"]  # fmt: skip


def test_version_at_follows_the_swaps_and_rollbacks():
    swaps = [{"version": 1, "at": 10.0}, {"version": 2, "at": 20.0}, {"version": 1, "at": 25.0}]
    assert [version_at(swaps, t) for t in (5.0, 10.0, 15.0, 22.0, 30.0)] == [0, 1, 1, 2, 1]


def test_violations_check_each_requirement():
    assert violations({"owd_p99_ms": 5.0, "loss": 0.0}, GAMING.qos) == []
    assert violations({"owd_p99_ms": 50.0, "loss": 0.2}, GAMING.qos) == ["p99", "loss"]
    assert violations({"owd_p99_ms": None, "loss": None}, GAMING.qos) == ["p99", "loss"]  # nothing came back
    assert violations({"completion_rate": 0.5}, TXN.qos) == ["floor"]


def _segment(start: float, gaming_p99: float, completion: float) -> dict:
    return {"start": start, "end": start + 5.0, "classes": {
        "gaming": {"owd_p99_ms": gaming_p99, "rtt_p99_ms": 2 * gaming_p99, "loss": 0.0},
        "transactions": {"rtt_p99_ms": 30.0, "completion_rate": completion},
        "bulk": {"throughput_mbps": 20.0}}}  # fmt: skip


def _results() -> dict:
    # Static rules until 100; v1 published at 100, controls from 103; v2 published at 130, rejected.
    segments = [_segment(80.0, 40.0, 0.9), _segment(90.0, 30.0, 0.99), _segment(101.0, 8.0, 0.99),
                _segment(110.0, 6.0, 0.99), _segment(120.0, 7.0, 0.99), _segment(131.0, 9.0, 0.99)]  # fmt: skip
    summary = {"model_update": {"swaps": [{"version": 1, "step": 40, "at": 103.0}], "verdicts": [
        {"version": 1, "accepted": True, "reason": "ok"},
        {"version": 2, "accepted": False, "reason": "worse_than_rules"}]}}  # fmt: skip
    rows = round_rows(2, segments, {1: 100.0, 2: 130.0}, summary, [GAMING, TXN, BULK])
    federation = {"run_id": 7, "status": "finished:completed", "epsilon": 3.0, "delta": 1e-5}
    return {"settings": {"rounds": 2}, "federation": federation, "tenants": {"arena": {"rounds": rows}}}


def test_round_rows_split_the_segments_by_publication_and_skip_a_swap_inside_one():
    rows = _results()["tenants"]["arena"]["rounds"]
    static, first, second = rows
    assert static["gate"] == "static rules" and static["in_force"] == [0] and static["segments"] == 2
    assert static["sla_violations"] == 3 and static["sla_checks"] == 4  # p99 twice, the floor once
    assert static["gaming_owd_p99_ms"] == pytest.approx(35.0)
    # The segment starting at 101 ran across the swap at 103: left out.
    assert first["segments"] == 2 and first["in_force"] == [1] and first["gate"] == "accepted"
    assert first["control_latency_s"] == pytest.approx(3.0) and first["sla_violation_rate"] == 0.0
    assert second["gate"] == "rejected:worse_than_rules" and second["in_force"] == [1]
    assert second["control_latency_s"] is None


def test_report_and_plots(tmp_path):
    results = _results()
    md = markdown_report(results)
    assert "| arena | 0 | 0 | static rules |" in md and "| arena | 2 | 1 | rejected:worse_than_rules |" in md
    assert "epsilon 3" in md
    assert "failed to run" not in md
    results["tenants"]["arena"]["traffic_errors"] = ["TestbedError: sink did not start"]
    assert "failed to run (a generator or the sink did not start or answer in time; results.json lists why): " \
           "arena 1." in markdown_report(results)
    assert [p.name for p in write_plots(results, tmp_path)] == ["arena.png"]
    json.dumps(results)  # what results.json holds


def test_inbox_watch_records_each_published_version(tmp_path):
    import numpy as np

    watch = InboxWatch({"arena": tmp_path / "inbox"})
    watch.poll()
    assert watch.versions() == {"arena": 0}
    card = {"layout": {}, "hidden_sizes": [4]}
    publish_model(tmp_path / "inbox", [np.zeros(2, dtype=np.float32)], card, 1, clock=lambda: 50.0)
    watch.poll()
    publish_model(tmp_path / "inbox", [np.zeros(2, dtype=np.float32)], card, 2, clock=lambda: 60.0)
    watch.poll()
    assert watch.published == {"arena": {1: 50.0, 2: 60.0}} and watch.versions() == {"arena": 2}


def test_agent_summary_and_node_config(tmp_path):
    log = "2026 INFO fedshape.agent: tenant arena: rules\n{not json\n" + json.dumps({"steps": 3}) + "\n"
    assert agent_summary(log) == {"steps": 3} and agent_summary("no summary\n") is None
    files = TenantFiles(tmp_path / "arena")
    assert node_config("arena", files) == {
        "tenant": "arena", "scenario": str(files.scenario), "experience-store": str(files.experience),
        "model-inbox": str(files.inbox), "state-file": str(files.state)}  # fmt: skip
