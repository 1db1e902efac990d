"""Pure unit tests of the testbed package: names, addresses, pcap parsing, tolerances, scenario, gap, report."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from experiments.testbed import TestbedConfig, run_testbed
from shaping.testbed import scenario as S
from shaping.testbed.checks import read_pcap_dscp, tcp_wire_mbps, udp_wire_mbps
from shaping.testbed.measure import binomial_tolerance, measure_class, percentile, window_mbps
from shaping.testbed.report import markdown_report
from shaping.testbed.runner import Flow, RunResult
from shaping.testbed.simcompare import gap
from shaping.testbed.topology import PathLink, TopologyConfig, bottleneck_limit, names


def test_names_stay_in_the_assigned_range() -> None:
    nm = names(TopologyConfig(prefix="fst", subnet_base=50))
    addrs = [*nm.tenant_addrs, *nm.router_in_addrs, *nm.router_out_addrs, *nm.sink_addrs, nm.sink_service]
    for a in addrs:
        ip = ipaddress.ip_address(a)
        assert ip in ipaddress.ip_network("10.200.0.0/16")
        assert 50 <= ip.packed[2] <= 54
    links = [*nm.tenant_links, *nm.router_in, *nm.router_out, *nm.sink_links]
    assert all(x.startswith("fst-") and len(x) <= 15 for x in [*links, *nm.namespaces])
    assert len(set(links)) == len(links)


def test_topology_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="two paths"):
        TopologyConfig(paths=(PathLink(),))
    with pytest.raises(ValueError, match=r"10\.200"):
        TopologyConfig(subnet_base=253)
    with pytest.raises(ValueError, match="too long"):
        TopologyConfig(prefix="toolongprefix")


def test_bottleneck_limit_is_buffer_of_capacity() -> None:
    assert bottleneck_limit(PathLink(capacity_mbps=30.0, buffer_ms=100.0)) == 375_000


def _pcap(packets: list[tuple[int, int, int]]) -> bytes:
    """Little-endian pcap of Ethernet/IPv4 packets (proto, dport, dscp)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for proto, dport, dscp in packets:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, dscp << 2, 28, 0, 0, 64, proto, 0, bytes(4), bytes(4))
        l4 = struct.pack("!HHHH", 1234, dport, 8, 0)
        frame = bytes(12) + b"\x08\x00" + ip + l4
        out += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    return out


def test_read_pcap_dscp_counts_port_and_mark(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(_pcap([(17, 5000, 46), (17, 5000, 46), (6, 5200, 10), (1, 0, 0)]))
    assert read_pcap_dscp(path) == {(5000, 46): 2, (5200, 10): 1}


def test_binomial_tolerance_shrinks_with_samples() -> None:
    assert binomial_tolerance(0.1, 3000) == pytest.approx(4 * (0.09 / 3000) ** 0.5)
    assert binomial_tolerance(0.1, 10_000) < binomial_tolerance(0.1, 100)


def test_wire_rates() -> None:
    assert tcp_wire_mbps(1448.0) == pytest.approx(1514.0)
    assert udp_wire_mbps(100.0, 100) == pytest.approx(142.0)


def test_scenario_matches_the_testbed_and_plans_validate() -> None:
    topo = TopologyConfig()
    work = S.Workload()
    sc = S.testbed_scenario(topo, work)
    spec = S.testbed_spec(topo, work)
    assert [p.name for p in sc.paths] == list(names(topo).tenant_links)
    assert sc.paths[0].capacity_mbps == topo.paths[0].capacity_mbps
    assert sc.paths[0].buffer_ms == topo.paths[0].buffer_ms
    assert spec.classes[0].ports == (S.GAMING_PORT,)
    assert work.gaming_mbps() == pytest.approx(4 * 60 * 162 * 8 / 1e6)
    for plan in (S.shaped_plan(spec), S.static_rules_plan(spec), S.fifo_plan(spec)):
        plan.validate(spec)
    shaped = S.shaped_plan(spec)
    assert shaped.root_mbps == pytest.approx(0.93 * topo.paths[0].capacity_mbps)
    moved = S.with_class(shaped, 3, path=1, rate_mbps=5.0)
    assert moved.classes[3].path == 1 and moved.classes[3].ceil_mbps >= 5.0
    assert moved.classes[:3] == shaped.classes[:3]
    assert [f.name for f in S.flows(work)] == ["gaming", "transactions", "bulk"]


def _run(sink_ports: dict[str, dict], flows: dict[str, dict], start_ns: int = 10**9) -> RunResult:
    return RunResult(flows, {"ports": sink_ports, "bin_s": 0.1, "t0_ns": 0}, start_ns, 2.0, {}, {})


def test_window_rate_and_measure_class() -> None:
    # 1 s offset between the sink's start and the run; 10 kB per 100 ms bin = 0.8 Mbit/s.
    bins = {str(b): 10_000 for b in range(0, 40)}
    run = _run({"5200": {"bins": bins, "bytes": 400_000, "packets": 0, "dscp": {}}}, {"bulk": {"bytes": 1}})
    assert window_mbps(run, 5200, 0.5) == pytest.approx(0.8)
    game = {"sent": 4, "received": 3, "rtt_ms": [1.0, 2.0, 9.0], "owd_ms": [0.5, 1.0, 4.5], "send_t_s": [0.1, 1.0, 1.5]}
    run = _run({"5000": {"packets": 3, "bytes": 360, "dscp": {"46": 3}, "bins": {}}}, {"gaming": game})
    m = measure_class(run, Flow("gaming", "gaming", 5000), warmup_s=0.5)
    assert m.loss == pytest.approx(0.25)
    assert m.rtt_p50_ms == pytest.approx(5.5)  # the first packet is in the warmup
    assert m.dscp == {"46": 3}
    assert percentile([], 99) is None


def test_gap_reports_absolute_and_relative() -> None:
    out = gap({"bulk": {"throughput_mbps": 27.0, "loss": 0.0}}, {"bulk": {"throughput_mbps": 30.0, "loss": None}})
    assert out["bulk"]["throughput_mbps"]["abs_gap"] == pytest.approx(-3.0)
    assert out["bulk"]["throughput_mbps"]["rel_gap"] == pytest.approx(-0.1)
    assert out["bulk"]["loss"]["abs_gap"] is None


def test_markdown_report_renders_each_check() -> None:
    results = {
        "settings": {"capacity_mbps": 30, "buffer_ms": 150, "duration_s": 5, "warmup_s": 1, "interval_s": 0.2},
        "wall_s": 1.0,
        "checks": {
            "rates": {"configured_mbps": {"bulk": 10.0}, "measured_wire_mbps": {"bulk": 9.9},
                      "relative_error": {"bulk": -0.01}, "passed": True},
            "drop": {"configured": 0.1, "measured": 0.098, "passed": True},
        },
    }  # fmt: skip
    md = markdown_report(results)
    assert "## rates: PASSED" in md and "| bulk | 10.00 | 9.90 | -1.0% |" in md
    assert "## drop: PASSED" in md and "measured: 0.0980" in md


def test_testbed_config_validates() -> None:
    with pytest.raises(ValueError, match="unknown checks"):
        TestbedConfig(checks=["nope"])
    with pytest.raises(ValueError, match="warmup"):
        TestbedConfig(duration_s=1.0, warmup_s=2.0)
    with pytest.raises(ValueError, match="fail_step < recover_step <= failover_steps"):
        TestbedConfig(fail_step=30, recover_step=20)
    with pytest.raises(ValueError, match="fail_step < recover_step <= failover_steps"):
        TestbedConfig(failover_steps=10, recover_step=None, fail_step=10)
    assert TestbedConfig(recover_step=None).recover_step is None


def test_run_testbed_skips_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    out = run_testbed(TestbedConfig(checks=["drop"]), tmp_path / "out")
    assert "root" in out["skipped"]
    assert not (tmp_path / "out").exists()
