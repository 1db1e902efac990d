"""Per-class measurements of a testbed run: latency percentiles, throughput, loss, DSCP seen."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shaping.testbed.runner import Flow, RunResult

#: Bytes a UDP datagram carries on the wire beyond its payload (Ethernet 14 + IPv4 20 + UDP 8).
UDP_WIRE_OVERHEAD = 42


@dataclass
class ClassMeasurement:
    """What one class got in a run (fields a class kind does not have are None)."""

    name: str
    kind: str
    sent: int | None = None
    received: int | None = None
    loss: float | None = None
    throughput_mbps: float | None = None
    """Payload delivered to the sink per second over the measurement window."""
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None
    owd_p50_ms: float | None = None
    owd_p99_ms: float | None = None
    completion_rate: float | None = None
    dscp: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), None without values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def binomial_tolerance(p: float, n: int, z: float = 4.0) -> float:
    """z standard deviations of the fraction of n Bernoulli(p) trials (normal approximation)."""
    return z * math.sqrt(max(p * (1.0 - p), 1e-12) / max(n, 1))


def window_mbps(run: RunResult, port: int, warmup_s: float, end_s: float | None = None) -> float:
    """Mean payload rate a bulk or UDP port received between warmup_s and end_s (default: the run's end)."""
    stats = run.sink["ports"].get(str(port))
    if stats is None:
        return 0.0
    bin_s = float(run.sink["bin_s"])
    offset = (run.start_ns - int(run.sink["t0_ns"])) / 1e9
    lo = math.ceil((offset + warmup_s) / bin_s)
    hi = math.floor((offset + (run.duration_s if end_s is None else end_s)) / bin_s)
    if hi <= lo:
        raise ValueError(f"empty bulk measurement window ({warmup_s} s warmup, {run.duration_s} s run)")
    got = sum(v for k, v in stats["bins"].items() if lo <= int(k) < hi)
    return got * 8 / ((hi - lo) * bin_s) / 1e6


def measure_class(run: RunResult, flow: Flow, warmup_s: float = 1.0) -> ClassMeasurement:
    """Summarize one class of a run, skipping its first warmup_s seconds where it can."""
    res = run.flows[flow.name]
    sink = run.sink["ports"].get(str(flow.port), {})
    m = ClassMeasurement(flow.name, flow.kind, dscp=sink.get("dscp") or None)
    if flow.kind == "gaming":
        keep = [i for i, t in enumerate(res["send_t_s"]) if t >= warmup_s]
        rtt = [res["rtt_ms"][i] for i in keep]
        owd = [res["owd_ms"][i] for i in keep]
        m.sent, m.received = int(res["sent"]), int(res["received"])
        m.loss = 1.0 - m.received / m.sent if m.sent else None
        m.rtt_p50_ms, m.rtt_p99_ms = percentile(rtt, 50), percentile(rtt, 99)
        m.owd_p50_ms, m.owd_p99_ms = percentile(owd, 50), percentile(owd, 99)
        size = int(flow.params.get("size", 120))
        m.throughput_mbps = m.received * size * 8 / run.duration_s / 1e6
    elif flow.kind == "udp_blast":
        m.sent, m.received = int(res["sent"]), int(sink.get("packets", 0))
        m.loss = 1.0 - m.received / m.sent if m.sent else None
        m.throughput_mbps = window_mbps(run, flow.port, warmup_s)
    elif flow.kind == "transactions":
        m.sent, m.received = int(res["issued"]), int(res["completed"])
        m.loss = 1.0 - m.received / m.sent if m.sent else None
        m.completion_rate = float(res["completion_rate"])
        m.rtt_p50_ms, m.rtt_p99_ms = percentile(res["latency_ms"], 50), percentile(res["latency_ms"], 99)
        m.throughput_mbps = sink.get("bytes", 0) * 8 / run.duration_s / 1e6
    else:
        m.throughput_mbps = window_mbps(run, flow.port, warmup_s)
    return m


def measure(run: RunResult, flows: list[Flow], warmup_s: float = 1.0) -> dict[str, ClassMeasurement]:
    """Measurements of every class of a run, by class name."""
    return {f.name: measure_class(run, f, warmup_s) for f in flows}
