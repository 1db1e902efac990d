"""CPU and memory utilization of a tenant's VMs from cgroup v2 or /proc, with injectable roots.

A VM is whatever holds its processes on the host: a cgroup (a libvirt/systemd scope, a container)
or a process (qemu's pid), or the whole host. Utilization is CPU seconds used over the interval
divided by the VM's vCPUs (cgroup ``cpu.max`` quota when set, else the spec's ``vcpus``), and
memory in use over its limit (``memory.max`` when set, else the spec's ``memory_gib``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from shaping.spec import HostMetrics, TenantSpec

GIB = 1024**3


@dataclass(frozen=True)
class VmUsage:
    """Cumulative CPU seconds and current memory of one VM; limits when its container sets them."""

    cpu_s: float
    mem_bytes: float
    mem_limit: float | None = None
    cpus: float | None = None


class VmSource(Protocol):
    """Reads one VM's usage."""

    def read(self) -> VmUsage:
        """Current usage; raises OSError when the VM is gone."""
        ...


class CgroupV2Source:
    """A cgroup v2 directory: ``cpu.stat`` usage_usec, ``memory.current``, ``memory.max``, ``cpu.max``.

    Args:
        path: the cgroup, relative to ``root`` (or absolute inside it).
        root: the cgroup2 mount.
    """

    def __init__(self, path: str, root: str | os.PathLike[str] = "/sys/fs/cgroup") -> None:
        self.dir = Path(root) / path.lstrip("/")

    def _read(self, name: str) -> str:
        return (self.dir / name).read_text().strip()

    def read(self) -> VmUsage:
        """Usage from the cgroup's files."""
        stat = dict(line.split() for line in self._read("cpu.stat").splitlines() if line.strip())
        mem = float(self._read("memory.current"))
        limit = None
        if (self.dir / "memory.max").exists() and (raw := self._read("memory.max")) != "max":
            limit = float(raw)
        cpus = None
        if (self.dir / "cpu.max").exists():
            quota, period = ([*self._read("cpu.max").split(), "100000"])[:2]
            if quota != "max":
                cpus = float(quota) / float(period)
        return VmUsage(float(stat["usage_usec"]) / 1e6, mem, limit, cpus)


class ProcPidSource:
    """A process (e.g. a VM's qemu): utime + stime from ``/proc/PID/stat``, resident set from ``statm``.

    Args:
        pid: the process id.
        proc_root: the proc mount.
        clk_tck, page_size: kernel constants (from sysconf by default).
    """

    def __init__(
        self, pid: int, proc_root: str | os.PathLike[str] = "/proc", clk_tck: int | None = None,
        page_size: int | None = None,
    ) -> None:  # fmt: skip
        self.dir = Path(proc_root) / str(pid)
        self.clk_tck = clk_tck or os.sysconf("SC_CLK_TCK")
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")

    def read(self) -> VmUsage:
        """Usage from the process's stat and statm."""
        stat = (self.dir / "stat").read_text()
        # The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
        rest = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(rest[11]), int(rest[12])
        rss_pages = int((self.dir / "statm").read_text().split()[1])
        return VmUsage((utime + stime) / self.clk_tck, float(rss_pages * self.page_size))


class ProcHostSource:
    """The whole host: ``/proc/stat`` busy time over all CPUs and ``/proc/meminfo`` MemTotal - MemAvailable."""

    def __init__(self, proc_root: str | os.PathLike[str] = "/proc", clk_tck: int | None = None) -> None:
        self.root = Path(proc_root)
        self.clk_tck = clk_tck or os.sysconf("SC_CLK_TCK")

    def read(self) -> VmUsage:
        """Usage of the host."""
        lines = (self.root / "stat").read_text().splitlines()
        cpu = [int(x) for x in lines[0].split()[1:]]
        busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # minus idle and iowait
        ncpu = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        info = {}
        for line in (self.root / "meminfo").read_text().splitlines():
            key, _, val = line.partition(":")
            info[key] = float(val.split()[0]) * 1024
        total = info["MemTotal"]
        return VmUsage(busy / self.clk_tck, total - info.get("MemAvailable", info.get("MemFree", 0.0)), total, ncpu)


class HostSampler:
    """CPU and memory utilization of the spec's VMs, in the spec's VM order.

    VMs without a source, or whose source fails, read 0 and are listed in ``missing`` of the last
    sample; the first sample has no CPU interval yet and reads 0 CPU.

    Args:
        spec: the tenant (its VMs, vcpus, memory_gib).
        sources: VM name -> its source.
        clock: monotonic clock, seconds.
    """

    def __init__(self, spec: TenantSpec, sources: Mapping[str, VmSource], clock: Callable[[], float] = time.monotonic):
        names = [v.name for v in spec.vms]
        unknown = sorted(set(sources) - set(names))
        if unknown:
            raise ValueError(f"host sources for {unknown}, which are not VMs of tenant {spec.name!r} ({names})")
        self.vms = spec.vms
        self.sources = dict(sources)
        self.clock = clock
        self._last: dict[str, tuple[float, float]] = {}
        self.missing: list[str] = []

    def sample(self) -> HostMetrics:
        """Utilizations (V,) since the previous sample."""
        now = self.clock()
        cpu, mem, missing = [], [], []
        for vm in self.vms:
            src = self.sources.get(vm.name)
            try:
                if src is None:
                    raise LookupError("no source")
                u = src.read()
            except (OSError, LookupError, ValueError, KeyError, IndexError):
                cpu.append(0.0)
                mem.append(0.0)
                missing.append(vm.name)
                continue
            prev = self._last.get(vm.name)
            self._last[vm.name] = (now, u.cpu_s)
            cpus = u.cpus or float(vm.vcpus)
            c = (u.cpu_s - prev[1]) / ((now - prev[0]) * cpus) if prev and now > prev[0] else 0.0
            limit = u.mem_limit or vm.memory_gib * GIB
            cpu.append(min(max(c, 0.0), 1.0))
            mem.append(min(max(u.mem_bytes / limit, 0.0), 1.0) if limit > 0 else 0.0)
        self.missing = missing
        return HostMetrics(torch.tensor(cpu, dtype=torch.float32), torch.tensor(mem, dtype=torch.float32))
