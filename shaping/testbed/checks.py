"""Enforcement checks on real traffic: per-class rates, DSCP on the wire, drop probability, path change.

Each check builds its plan from the testbed's scenario, applies it with the tenant's
KernelEnforcer, runs real generators and returns a JSON-able dict with the measured numbers,
the targets and ``passed``.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shaping.spec import ShapingPlan, TenantSpec
from shaping.testbed import scenario as S
from shaping.testbed.enforce import tenant_enforcer
from shaping.testbed.measure import binomial_tolerance, measure, window_mbps
from shaping.testbed.runner import Flow, RunResult, run_flows
from shaping.testbed.topology import Testbed, ns_argv

#: Relative tolerance of an enforced rate.
RATE_TOLERANCE = 0.10


@dataclass
class Bench:
    """The testbed with the tenant's spec and workload."""

    tb: Testbed
    work: S.Workload
    spec: TenantSpec

    @classmethod
    def open(cls, tb: Testbed, work: S.Workload | None = None) -> Bench:
        """The bench of a built testbed."""
        work = work or S.Workload()
        return cls(tb, work, S.testbed_spec(tb.cfg, work))


def run_with_plan(bench: Bench, plan: ShapingPlan | None, flows: list[Flow], duration_s: float,
                  during: Any = None) -> RunResult:  # fmt: skip
    """Apply a plan (None: no shaping at all), run the flows, and tear the shaping down afterwards."""
    enf = tenant_enforcer(bench.tb, bench.spec)
    try:
        if plan is None:
            enf.teardown()
        else:
            enf.apply(plan)
        return run_flows(bench.tb, flows, duration_s, during=during)
    finally:
        enf.teardown()
        enf.close()


def tcp_wire_mbps(payload_mbps: float) -> float:
    """Wire rate of bulk TCP carrying payload_mbps in full segments."""
    return payload_mbps * S.TCP_WIRE_SEGMENT / S.TCP_MSS


def udp_wire_mbps(payload_mbps: float, size: int) -> float:
    """Wire rate of UDP datagrams of `size` payload bytes."""
    return payload_mbps * (size + 42) / size


def check_rates(bench: Bench, duration_s: float = 6.0, warmup_s: float = 2.0, bulk_mbps: float = 10.0,
                probe_mbps: float = 5.0) -> dict[str, Any]:  # fmt: skip
    """Two classes capped at rate = ceil (bulk TCP, and UDP offered at 1.7x its cap): delivered within 10%."""
    size = 1000
    pps = 1.7 * probe_mbps * 1e6 / 8 / (size + 42)
    work = replace(bench.work, probe_pps=pps, probe_bytes=size)
    plan = S.shaped_plan(bench.spec)
    plan = S.with_class(plan, 2, rate_mbps=bulk_mbps, ceil_mbps=bulk_mbps)
    plan = S.with_class(plan, 3, rate_mbps=probe_mbps, ceil_mbps=probe_mbps)
    flows = S.flows(work)
    run = run_with_plan(bench, plan, flows, duration_s)
    got = {
        "bulk": tcp_wire_mbps(window_mbps(run, S.BULK_PORT, warmup_s)),
        "probe": udp_wire_mbps(window_mbps(run, S.PROBE_PORT, warmup_s), size),
    }
    want = {"bulk": bulk_mbps, "probe": probe_mbps}
    err = {k: got[k] / want[k] - 1.0 for k in want}
    return {
        "configured_mbps": want,
        "measured_wire_mbps": got,
        "relative_error": err,
        "probe_offered_mbps": udp_wire_mbps(pps * size * 8 / 1e6, size),
        "tolerance": RATE_TOLERANCE,
        "passed": all(abs(e) <= RATE_TOLERANCE for e in err.values()),
    }


def read_pcap_dscp(path: Path) -> Counter[tuple[int, int]]:
    """(destination port, DSCP) counts of the IPv4 TCP/UDP packets of a pcap file (Ethernet link type)."""
    data = path.read_bytes()
    if len(data) < 24:
        return Counter()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out: Counter[tuple[int, int]] = Counter()
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 14 + 20 + 4 or pkt[12:14] != b"\x08\x00":
            continue
        ihl = (pkt[14] & 0x0F) * 4
        if pkt[23] not in (6, 17) or len(pkt) < 14 + ihl + 4:
            continue
        dport = struct.unpack_from("!H", pkt, 14 + ihl + 2)[0]
        out[(dport, pkt[15] >> 2)] += 1
    return out


def check_dscp(bench: Bench, duration_s: float = 4.0, max_packets: int = 20000) -> dict[str, Any]:
    """Capture the bottleneck link at the sink with tcpdump: each class's packets carry its plan's DSCP."""
    work = replace(bench.work, probe_pps=200.0)
    plan = S.shaped_plan(bench.spec)
    plan = S.with_class(plan, 2, rate_mbps=5.0, ceil_mbps=5.0, dscp=10)  # AF11, so bulk's mark is visible too
    ports = [S.GAMING_PORT, S.TXN_PORT, S.BULK_PORT, S.PROBE_PORT]
    want = {p: cs.dscp for p, cs in zip(ports, plan.classes, strict=True)}
    nm = bench.tb.names
    with tempfile.TemporaryDirectory(prefix="fst-pcap-") as tmp:
        pcap = Path(tmp) / "s0.pcap"
        argv = ["timeout", str(int(duration_s + 30)), "tcpdump", "-i", nm.sink_links[0], "-n", "-U", "-s", "96",
                "-c", str(max_packets), "-w", str(pcap), "dst", "host", nm.sink_service]  # fmt: skip
        cap = subprocess.Popen(ns_argv(nm.sink_ns, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)  # tcpdump opens its socket
            run_with_plan(bench, plan, S.flows(work), duration_s)
            time.sleep(0.5)
        finally:
            cap.terminate()
            cap.wait(timeout=10.0)
        seen = read_pcap_dscp(pcap)
    per_port: dict[str, dict[str, int]] = {}
    for (port, dscp), n in seen.items():
        if port in want:
            per_port.setdefault(str(port), {})[str(dscp)] = n
    ok = {str(p): per_port.get(str(p), {}).get(str(d), 0) / max(sum(per_port.get(str(p), {}).values()), 1)
          for p, d in want.items()}  # fmt: skip
    return {
        "expected_dscp": {str(p): d for p, d in want.items()},
        "captured": per_port,
        "fraction_marked": ok,
        "passed": all(v >= 0.99 for v in ok.values()),
    }


def check_drop(bench: Bench, drop_prob: float = 0.1, packets: int = 3000, pps: float = 1000.0) -> dict[str, Any]:
    """A UDP class with a drop probability: sent vs received within a binomial tolerance (4 sigma)."""
    duration = packets / pps
    flow = Flow("probe", "udp_blast", S.PROBE_PORT, {"pps": pps, "count": packets, "size": 200})
    plan = S.with_class(S.shaped_plan(bench.spec), 3, drop_prob=drop_prob)
    run = run_with_plan(bench, plan, [flow], duration + 0.5)
    m = measure(run, [flow], 0.0)["probe"]
    sent, received = int(m.sent or 0), int(m.received or 0)
    rate = 1.0 - received / sent if sent else 1.0
    tol = binomial_tolerance(drop_prob, sent)
    return {
        "configured": drop_prob,
        "sent": sent,
        "received": received,
        "measured": rate,
        "tolerance": tol,
        "passed": sent >= 0.9 * packets and abs(rate - drop_prob) <= tol,
    }


def check_path_change(bench: Bench, duration_s: float = 4.0, pps: float = 500.0) -> dict[str, Any]:
    """Move a class to the second path mid-run: its bytes show up on the second link's counters."""
    nm, tb = bench.tb.names, bench.tb
    size = 500
    flow = Flow("probe", "udp_blast", S.PROBE_PORT, {"pps": pps, "count": int(pps * duration_s * 2), "size": size})
    plan = S.shaped_plan(bench.spec)
    moved = S.with_class(plan, 3, path=1)
    marks: dict[str, Any] = {}
    enf = tenant_enforcer(tb, bench.spec)

    def b1() -> int:
        return tb.link_stats(nm.router_ns, nm.router_out[1])["tx_bytes"]

    def change(elapsed: float) -> None:
        time.sleep(max(0.0, duration_s / 2 - elapsed))
        marks["before"] = b1()
        marks["t"] = time.monotonic()
        enf.apply(moved)
        marks["applied"] = b1()

    try:
        enf.apply(plan)
        start = b1()
        run = run_flows(tb, [flow], duration_s, during=change)
    finally:
        enf.teardown()
        enf.close()
    after = run.counters_after[f"{nm.router_ns}/{nm.router_out[1]}"]["tx_bytes"]
    moved_s = run.start_ns / 1e9 + duration_s - marks["t"]
    expected = pps * (size + 42) * moved_s
    m = measure(run, [flow], 0.0)["probe"]
    return {
        "path1_bytes_before_change": marks["before"] - start,
        "path1_bytes_after_change": after - marks["before"],
        "expected_after_bytes": expected,
        "probe_loss": m.loss,
        "passed": marks["before"] - start < 0.02 * expected and after - marks["before"] >= 0.8 * expected,
    }
