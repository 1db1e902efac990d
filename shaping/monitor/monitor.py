"""The kernel monitor: builds the spec's ClassMetrics and HostMetrics (hence the Observation) from real counters.

Per interval of length dt (between two ``sample`` calls, clock injectable), for class c with HTB
class id ``classids[c]`` (summed over the path interfaces):

- delivered_mbps = delta(bytes sent) * 8 / dt;
- dropped bytes = delta(drops) * the interval's mean packet size (HTB counts drops in packets),
  plus drops counted before the qdisc (``extra_drops``, e.g. the nftables drop rules' counters);
- offered_mbps = delivered + dropped + backlog growth, all per dt; loss = dropped / offered;
- demand_mbps = max(offered, the demand the application pushed);
- delays (one-way, milliseconds; a symmetric path is assumed, so one-way = RTT / 2):
  * probes: with at least ``min_probe_samples`` probe RTTs of the class in the interval, the mean
    and the empirical 99th percentile of RTT / 2 (linear interpolation, numpy's default);
  * else TCP_INFO of the class's sockets: mean of srtt / 2, and the largest per-socket p99
    estimate (srtt + z99 * sigma) / 2, where sigma = ``rttvar_sigma`` * rttvar (TCP's rttvar is
    a mean deviation; for a normal distribution sigma = 1.25 * mean deviation);
  * else base delay + the HTB queue's sojourn time, backlog * 8 / max(delivered, plan rate)
    (a lower bound: the backlog is seen at the sampling instant only);
  * an application's pushed p99_ms replaces the network p99; p99 is never below the mean.
- base_delay_ms: the configured propagation delay of the class's path (plan's path), else
  min_rtt / 2 of the class's sockets, else 0;
- app_metric: the application's latest pushed value if younger than ``app_max_age_s``, else
  ``app_metric_default``.

Per path (PathMetrics, in the spec's path order), with a PathProber: the probes' one-way delay and loss
of the window since the previous sample, and delivered = the delivered rate of the classes the plan in
force puts on the path x (1 - the probes' loss) (the tenant's counters see what it sent into the path,
not what the path lost beyond); a window in which no probe was decided has loss 0 and the longest wait
as its delay. A path whose probes neither were sent nor decided in the window (the prober not
running), and every path without a prober, takes shaping.spec.paths_from_classes (the classes on the
path as its probes). ``Observed.info["path_source"]`` says which ("probe" or "classes") per path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from shaping.control.backend import Observed, build_observed
from shaping.monitor.appmetrics import AppMetrics
from shaping.monitor.host import HostSampler
from shaping.monitor.pathprobe import PathProber
from shaping.monitor.probes import ProbeScheduler
from shaping.monitor.rtt import RttSource, SocketRtt, class_matcher
from shaping.monitor.tcstats import ClassCounters, ClassStatsSource, InterfaceCounters
from shaping.spec import (
    ClassMetrics,
    HostMetrics,
    ObservationLayout,
    PathMetrics,
    PlanBatch,
    ShapingPlan,
    TenantSpec,
    empty_plan,
    paths_from_classes,
    plan_tensors,
)

#: Cumulative (packets, bytes) dropped per class index before the qdisc.
DropCounters = Callable[[], Mapping[int, tuple[int, int]]]


@dataclass(frozen=True)
class MonitorConfig:
    """How the monitor turns counters and samples into metrics."""

    base_delay_ms: tuple[float, ...] = ()
    """One-way propagation delay of each path, in path order; empty: from TCP min_rtt."""
    app_metric_default: float = 1.0
    """Application metric of a class whose application pushed nothing recent."""
    app_max_age_s: float | None = 5.0
    """Pushed values older than this are ignored (None: never)."""
    min_probe_samples: int = 3
    """Probe RTTs needed in an interval to use them instead of TCP_INFO."""
    rttvar_sigma: float = 1.25
    """Standard deviation per unit of TCP's rttvar (mean deviation of a normal: sigma = 1.25 * mdev)."""
    z99: float = 2.326
    """Normal quantile of the 99th percentile."""
    default_packet_bytes: int = 1500
    """Packet size assumed for drops in an interval that sent nothing."""
    labels: dict[str, Any] = field(default_factory=dict)
    """Free-form labels copied into every Observed.info (interface names, namespace)."""


def _delta(new: int, old: int) -> int:
    """Counter difference; a counter that went down was reset (class recreated), so the new value is the delta."""
    return new - old if new >= old else new


class Monitor:
    """Measures one tenant's classes and VMs every interval.

    Args:
        spec: the tenant.
        stats: HTB class and interface counters (NetlinkClassStats or a fake).
        classids: HTB class id of each class, in spec order (EnforceTarget.classid(i)).
        rtt: TCP socket RTTs (SockDiagRtt), optional.
        probes: active probes of the classes, optional (started by the caller).
        path_probes: probes of each path (PathProber, one target per path), optional (started by the caller).
        host: VM CPU/memory, optional (zeros otherwise).
        app: pushed application metrics, optional.
        extra_drops: drops before the qdisc per class, optional.
        config: estimation settings.
        clock: monotonic clock in seconds.
    """

    def __init__(
        self,
        spec: TenantSpec,
        stats: ClassStatsSource,
        classids: Sequence[int],
        *,
        rtt: RttSource | None = None,
        probes: ProbeScheduler | None = None,
        path_probes: PathProber | None = None,
        host: HostSampler | None = None,
        app: AppMetrics | None = None,
        extra_drops: DropCounters | None = None,
        config: MonitorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(classids) != len(spec.classes):
            raise ValueError(f"{len(classids)} class ids for {len(spec.classes)} classes of tenant {spec.name!r}")
        self.spec = spec
        self.layout = ObservationLayout(spec)
        self.stats, self.classids = stats, tuple(int(c) for c in classids)
        self.rtt, self.probes, self.host, self.app, self.extra_drops = rtt, probes, host, app, extra_drops
        if path_probes is not None and len(path_probes.targets) != len(spec.paths):
            raise ValueError(f"{len(path_probes.targets)} path probe targets for the {len(spec.paths)} paths "
                             f"{list(spec.paths)} of tenant {spec.name!r}")  # fmt: skip
        self.path_probes = path_probes
        self.config = config or MonitorConfig()
        if self.config.base_delay_ms and len(self.config.base_delay_ms) != len(spec.paths):
            raise ValueError(f"base_delay_ms has {len(self.config.base_delay_ms)} values, tenant has "
                             f"{len(spec.paths)} paths")  # fmt: skip
        self.clock = clock
        self.match = class_matcher(spec)
        self.plan: ShapingPlan | None = None
        self._prev = self._read_counters()
        self._prev_t = clock()
        self._prev_ifs = self._read_ifaces()
        if host is not None:
            host.sample()  # prime the CPU counters

    def set_plan(self, plan: ShapingPlan) -> None:
        """The plan now enforced (its paths pick base delays, its rates bound the queue sojourn)."""
        self.plan = plan

    def _read_counters(self) -> tuple[dict[int, ClassCounters], Mapping[int, tuple[int, int]]]:
        return self.stats.read_classes(), (self.extra_drops() if self.extra_drops else {})

    def _read_ifaces(self) -> dict[str, InterfaceCounters]:
        return self.stats.read_interfaces()

    def _rates(self, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """(delivered, offered, loss, backlog bytes) per class, and raw deltas for info."""
        (cls_now, drops_now), (cls_old, drops_old) = self._read_counters(), self._prev
        self._prev = (cls_now, drops_now)
        n = len(self.classids)
        delivered, offered, loss, backlog = (np.zeros(n) for _ in range(4))
        missing, overlimits = [], []
        for c, cid in enumerate(self.classids):
            new, old = cls_now.get(cid), cls_old.get(cid, ClassCounters())
            if new is None:
                missing.append(self.spec.classes[c].name)
                overlimits.append(0)
                continue
            d_bytes, d_pkts = _delta(new.bytes, old.bytes), _delta(new.packets, old.packets)
            pkt = d_bytes / d_pkts if d_pkts > 0 else float(self.config.default_packet_bytes)
            dropped = _delta(new.drops, old.drops) * pkt
            ep, eb = drops_now.get(c, (0, 0))
            op, ob = drops_old.get(c, (0, 0))
            dropped += _delta(eb, ob) if eb or ob else _delta(ep, op) * pkt
            growth = max(new.backlog_bytes - old.backlog_bytes, 0)
            to_mbps = 8 / dt / 1e6
            delivered[c] = d_bytes * to_mbps
            offered[c] = (d_bytes + dropped + growth) * to_mbps
            loss[c] = dropped / (d_bytes + dropped + growth) if d_bytes + dropped + growth > 0 else 0.0
            backlog[c] = new.backlog_bytes
            overlimits.append(_delta(new.overlimits, old.overlimits))
        info = {"missing_classes": missing, "overlimits": overlimits, "backlog_bytes": backlog.tolist()}
        return delivered, offered, loss, backlog, info

    def _iface_info(self, dt: float) -> dict[str, dict[str, float]]:
        now, old = self._read_ifaces(), self._prev_ifs
        self._prev_ifs = now
        out = {}
        for name, s in now.items():
            o = old.get(name, InterfaceCounters())
            out[name] = {
                "tx_mbps": _delta(s.tx_bytes, o.tx_bytes) * 8 / dt / 1e6,
                "rx_mbps": _delta(s.rx_bytes, o.rx_bytes) * 8 / dt / 1e6,
                "tx_dropped": float(_delta(s.tx_dropped, o.tx_dropped)),
            }
        return out

    def _sockets(self) -> list[list[SocketRtt]]:
        per: list[list[SocketRtt]] = [[] for _ in self.spec.classes]
        if self.rtt is None:
            return per
        for s in self.rtt.read():
            c = self.match(s.src, s.sport, s.dst, s.dport)
            if c is not None:
                per[c].append(s)
        return per

    def _base(self, c: int, socks: list[SocketRtt]) -> float:
        cfg = self.config
        if cfg.base_delay_ms:
            path = self.plan.classes[c].path if self.plan is not None else 0
            return float(cfg.base_delay_ms[path])
        mins = [s.min_rtt_ms for s in socks if s.min_rtt_ms > 0]
        return min(mins) / 2 if mins else 0.0

    def _delays(
        self, delivered: np.ndarray, backlog: np.ndarray, since: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        cfg = self.config
        socks = self._sockets()
        probe = self.probes.samples(since) if self.probes is not None else {}
        n = len(self.spec.classes)
        mean, p99, base = np.zeros(n), np.zeros(n), np.zeros(n)
        source = []
        for c in range(n):
            base[c] = self._base(c, socks[c])
            rate = max(delivered[c], self.plan.classes[c].rate_mbps if self.plan is not None else 0.0)
            sojourn = backlog[c] * 8 / (rate * 1e6) * 1e3 if rate > 0 else 0.0
            samples = probe.get(c, [])
            if len(samples) >= cfg.min_probe_samples:
                oneway = np.asarray(samples) / 2
                mean[c], p99[c] = float(oneway.mean()), float(np.quantile(oneway, 0.99))
                source.append("probe")
            elif socks[c]:
                mean[c] = float(np.mean([s.rtt_ms for s in socks[c]])) / 2
                p99[c] = max((s.rtt_ms + cfg.z99 * cfg.rttvar_sigma * s.rttvar_ms) / 2 for s in socks[c])
                source.append("tcp_info")
            else:
                mean[c] = p99[c] = base[c] + sojourn
                source.append("queue")
        info = {"delay_source": source, "sockets": [len(s) for s in socks], "probe_samples": [len(probe.get(c, []))
                for c in range(n)]}  # fmt: skip
        return mean, p99, base, info

    def sample(self) -> Observed:
        """Measurements since the previous sample (or since construction), as an Observed."""
        now = self.clock()
        dt = now - self._prev_t
        if dt <= 0:
            raise RuntimeError(f"monitor sampled twice at the same time ({now}); the interval must be > 0")
        since, self._prev_t = self._prev_t, now
        delivered, offered, loss, backlog, info = self._rates(dt)
        info["interfaces"] = self._iface_info(dt)
        mean, p99, base, dinfo = self._delays(delivered, backlog, since)
        info.update(dinfo)
        demand = offered.copy()
        app_metric = np.full(len(self.spec.classes), self.config.app_metric_default)
        if self.app is not None:
            for c, r in enumerate(self.app.snapshot(self.config.app_max_age_s)):
                if r.app_metric is not None:
                    app_metric[c] = r.app_metric
                if r.demand_mbps is not None:
                    demand[c] = max(demand[c], r.demand_mbps)
                if r.p99_ms is not None:
                    p99[c] = r.p99_ms
            info["app_errors"] = self.app.errors
        p99 = np.maximum(p99, mean)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.nan_to_num(x, nan=0.0, posinf=0.0), dtype=torch.float32)

        metrics = ClassMetrics(t(offered), t(delivered), t(demand), t(loss), t(mean), t(p99), t(base), t(app_metric))
        if self.host is not None:
            host = self.host.sample()
            info["missing_vms"] = list(self.host.missing)
        else:
            v = len(self.spec.vms)
            host = HostMetrics(torch.zeros(v), torch.zeros(v))
        info.update(self.config.labels)
        plan = plan_tensors(self.plan) if self.plan is not None else empty_plan(len(self.spec.classes))
        paths = self._paths(metrics, plan, info)
        return build_observed(self.layout, metrics, host, now, dt, paths=paths, plan=plan, info=info)

    def _paths(self, metrics: ClassMetrics, plan: PlanBatch, info: dict[str, Any]) -> PathMetrics:
        """Per-path metrics: the path probes' window where it decided enough probes, else the classes on the path."""
        derived = paths_from_classes(self.spec, metrics, plan)
        if self.path_probes is None:
            info["path_source"] = ["classes"] * len(self.spec.paths)
            return derived
        delay, loss, delivered = (x.clone() for x in derived)
        source, probes = [], []
        for p, w in enumerate(self.path_probes.take()):
            probes.append({"sent": w.sent, "answered": w.answered, "lost": w.lost, "late": w.late,
                           "timeout_ms": w.timeout_s * 1e3})  # fmt: skip
            if w.delay_ms is None:
                source.append("classes")
                continue
            lost = w.loss or 0.0
            delay[p], loss[p] = w.delay_ms, lost
            delivered[p] = derived.delivered_mbps[p] * (1.0 - lost)
            source.append("probe")
        info["path_source"], info["path_probes"] = source, probes
        if self.path_probes.error:
            info["path_probe_error"] = self.path_probes.error
        return PathMetrics(delay, loss, delivered)

    def close(self) -> None:
        """Close every source the monitor holds."""
        for src in (self.stats, self.rtt, self.probes, self.path_probes, self.app):
            close = getattr(src, "close", None)
            if close is not None:
                close()
