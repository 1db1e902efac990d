"""VM CPU and memory from fixture cgroup v2 and /proc trees."""

from __future__ import annotations

import pytest

from shaping.monitor import CgroupV2Source, HostSampler, ProcHostSource, ProcPidSource
from shaping.monitor.host import GIB
from tests.monitor.conftest import Clock


def _cgroup(root, path: str, usage_usec: int, current: int, mem_max: str = "max", cpu_max: str | None = None):
    d = root / path
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")
    (d / "memory.current").write_text(f"{current}\n")
    (d / "memory.max").write_text(f"{mem_max}\n")
    if cpu_max is not None:
        (d / "cpu.max").write_text(f"{cpu_max}\n")


def test_cgroup_v2_cpu_and_memory(spec, tmp_path, clock: Clock):
    _cgroup(tmp_path, "machine.slice/vm", 1_000_000, GIB // 4)
    sampler = HostSampler(spec, {"vm": CgroupV2Source("machine.slice/vm", tmp_path)}, clock=clock)
    first = sampler.sample()
    assert first.cpu.tolist() == [0.0]  # no interval yet
    assert first.memory.tolist() == pytest.approx([0.25])  # memory.max is "max": the spec's 1 GiB
    # 0.5 s later the VM used 0.5 CPU-seconds of its 2 vCPUs -> 50%
    _cgroup(tmp_path, "machine.slice/vm", 1_500_000, GIB // 2, mem_max=str(GIB))
    clock.t += 0.5
    s = sampler.sample()
    assert s.cpu.tolist() == pytest.approx([0.5]) and s.memory.tolist() == pytest.approx([0.5])
    # cpu.max quota of 1 CPU overrides the spec's vcpus
    _cgroup(tmp_path, "machine.slice/vm", 2_000_000, GIB // 2, cpu_max="100000 100000")
    clock.t += 0.5
    assert sampler.sample().cpu.tolist() == pytest.approx([1.0])


def test_proc_pid_and_host(spec, tmp_path, clock: Clock):
    pid = tmp_path / "42"
    pid.mkdir()
    # comm with a space and parenthesis: fields are counted after the last ')'
    fields = ["S"] + ["0"] * 10 + ["100", "50"] + ["0"] * 30
    (pid / "stat").write_text("42 (qemu (vm) x) " + " ".join(fields) + "\n")
    (pid / "statm").write_text("1000 65536 0 0 0 0 0\n")
    src = ProcPidSource(42, tmp_path, clk_tck=100, page_size=4096)
    u = src.read()
    assert u.cpu_s == pytest.approx(1.5) and u.mem_bytes == 65536 * 4096
    (tmp_path / "stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0\ncpu1 50 0 50 350 50\n")
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n")
    h = ProcHostSource(tmp_path, clk_tck=100).read()
    assert h.cpu_s == pytest.approx(2.0) and h.cpus == 2
    assert h.mem_bytes == pytest.approx(750 * 1024) and h.mem_limit == pytest.approx(1000 * 1024)


def test_missing_sources_read_zero_and_are_listed(spec, tmp_path, clock: Clock):
    sampler = HostSampler(spec, {"vm": CgroupV2Source("gone", tmp_path)}, clock=clock)
    s = sampler.sample()
    assert s.cpu.tolist() == [0.0] and sampler.missing == ["vm"]
    with pytest.raises(ValueError, match="not VMs of tenant"):
        HostSampler(spec, {"net": CgroupV2Source("x", tmp_path)})
