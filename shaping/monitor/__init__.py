"""Monitoring of a tenant on a real host: HTB class and interface counters over netlink, TCP RTTs over
sock_diag, active probes of classes and of paths, VM CPU/memory from cgroup v2 or /proc, application
metrics pushed locally;
the Monitor builds exactly the spec's ClassMetrics/HostMetrics (and so the Observation) from them."""

from shaping.monitor.appmetrics import AppMetricError, AppMetrics, AppReport, parse_line
from shaping.monitor.host import CgroupV2Source, HostSampler, ProcHostSource, ProcPidSource, VmSource, VmUsage
from shaping.monitor.monitor import Monitor, MonitorConfig
from shaping.monitor.pathprobe import PathProbeConfig, PathProber, PathProbeTarget, PathReflector, PathWindow
from shaping.monitor.probes import ProbeScheduler, TcpConnectProbe, UdpEchoProbe, UdpEchoServer
from shaping.monitor.rtt import SockDiagRtt, SocketRtt, class_matcher
from shaping.monitor.tcstats import (
    ClassCounters,
    ClassStatsSource,
    InterfaceCounters,
    NetlinkClassStats,
    NullClassStats,
    sum_classes,
)

__all__ = [
    "AppMetricError",
    "AppMetrics",
    "AppReport",
    "CgroupV2Source",
    "ClassCounters",
    "ClassStatsSource",
    "HostSampler",
    "InterfaceCounters",
    "Monitor",
    "MonitorConfig",
    "NetlinkClassStats",
    "NullClassStats",
    "PathProbeConfig",
    "PathProbeTarget",
    "PathProber",
    "PathReflector",
    "PathWindow",
    "ProbeScheduler",
    "ProcHostSource",
    "ProcPidSource",
    "SockDiagRtt",
    "SocketRtt",
    "TcpConnectProbe",
    "UdpEchoProbe",
    "UdpEchoServer",
    "VmSource",
    "VmUsage",
    "class_matcher",
    "parse_line",
    "sum_classes",
]
