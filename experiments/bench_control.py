"""Control-path speed: applying a 16-class plan (naive pyroute2, FedShape's fast path, tc), observing, inferring.

Run as root: ``python -m experiments.bench_control [--iters 200]``; prints one JSON object. It builds
its own namespace pair (fse-bench-a/b, 10.200.20.0/24) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from shaping.config import ClassConfig, EntityConfig, PathConfig, ScenarioConfig, TenantConfig
from shaping.enforce import EnforceConfig, HtbClass, KernelEnforcer, NetlinkBackend, target_from_spec
from shaping.enforce.kinds.htb import desired_classes
from shaping.enforce.testing import netns_pair
from shaping.spec import (
    ActionLayout,
    ClassShaping,
    ObservationLayout,
    ShapingPlan,
    TenantSpec,
    burst_bytes,
    tenant_spec,
)


def bench_spec(n_classes: int) -> TenantSpec:
    """One tenant, one path, ``n_classes`` TCP classes on ports 7000+i."""
    classes = [
        ClassConfig(name=f"c{i}", app=("gaming", "transactions", "video", "bulk", "web")[i % 5], ports=[7000 + i])
        for i in range(n_classes)
    ]
    tenant = TenantConfig(
        name="bench", cap_mbps=1000.0, entities=[EntityConfig(cidrs=["10.200.20.1/32"])], classes=classes
    )
    return tenant_spec(ScenarioConfig(paths=[PathConfig(name="p0", capacity_mbps=1000.0)], tenants=[tenant]), 0)


def bench_plan(spec: TenantSpec, step: int) -> ShapingPlan:
    """A plan whose every class rate differs from the previous step's."""
    classes = []
    for i in range(len(spec.classes)):
        rate = 5.0 + i + (step % 7) * 0.5
        classes.append(ClassShaping(rate, rate * 4, burst_bytes(rate), i % 4, 0, 0.0, 0))
    return ShapingPlan(spec.name, tuple(classes), 900.0)


def percentiles(samples: Sequence[tuple[float, float]]) -> dict[str, float]:
    """p50 and p99 in milliseconds of wall time, and of this thread's CPU time (user + system).

    The CPU time is what the work costs whatever else runs on the machine (a child process's
    CPU, as in the tc variants, is not in it); the wall time includes waiting for a core.
    """
    out: dict[str, float] = {}
    for name, values in (("", [w for w, _ in samples]), ("cpu_", [c for _, c in samples])):
        ms = sorted(v * 1e3 for v in values)
        out[f"{name}p50_ms"] = round(statistics.median(ms), 4)
        out[f"{name}p99_ms"] = round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 4)
    out["n"] = len(samples)
    return out


def timed(fn: Callable[[int], Any], iters: int, warmup: int = 3) -> list[tuple[float, float]]:
    """(wall, thread CPU) seconds of ``fn(step)`` for each of ``iters`` steps, after a warm-up."""
    for k in range(warmup):
        fn(k)
    out = []
    for k in range(iters):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(warmup + k)
        out.append((time.perf_counter() - t0, time.thread_time() - c0))
    return out


def _changes(spec: TenantSpec, enf: KernelEnforcer, step: int) -> list[HtbClass]:
    """The traffic classes' HTB parameters for a step (the root and default classes do not change)."""
    first = enf.target.classid(0)
    return [op for op in desired_classes(spec, bench_plan(spec, step), enf.target) if op.classid >= first]


def tc_line(op: HtbClass) -> str:
    """One ``tc -batch`` line changing an HTB class (rates in bytes/s as tc's 'bps' unit)."""
    p, c = op.parent, op.classid
    return (
        f"class change dev {op.interface} parent {p >> 16:x}:{p & 0xFFFF:x} classid {c >> 16:x}:{c & 0xFFFF:x} "
        f"htb rate {op.rate}bps ceil {op.ceil}bps burst {op.burst} cburst {op.cburst} prio {op.prio}"
    )


def bench_apply(spec: TenantSpec, enf: KernelEnforcer, ns: str, iters: int) -> dict[str, Any]:
    """The four ways of applying a 16-class rate change, and a read-back check of the fast one."""
    backend = enf.backend
    assert isinstance(backend, NetlinkBackend)
    ipr = backend.ipr
    index = {n: ipr.link_lookup(ifname=n)[0] for n in enf.target.interfaces}
    state = {"step": 0}

    def naive(step: int) -> None:
        for op in _changes(spec, enf, step):
            kw = {"rate": op.rate, "ceil": op.ceil, "burst": op.burst, "cburst": op.cburst, "prio": op.prio}
            ipr.tc("change-class", "htb", index[op.interface], op.classid, parent=op.parent, **kw)

    def fast(step: int) -> None:
        state["step"] = step + 1
        res = enf.apply(bench_plan(spec, step + 1))  # step 0 is already applied
        if not res.fast or len(res.ops) != len(spec.classes):
            raise RuntimeError(f"expected {len(spec.classes)} fast changes, got {len(res.ops)} (fast={res.fast})")

    def tc_each(step: int) -> None:
        for op in _changes(spec, enf, step):
            subprocess.run(["tc", "-n", ns, *tc_line(op).split()], check=True, capture_output=True)

    def tc_batch(step: int) -> None:
        text = "\n".join(tc_line(op) for op in _changes(spec, enf, step)) + "\n"
        subprocess.run(["tc", "-n", ns, "-batch", "-"], input=text.encode(), check=True, capture_output=True)

    out: dict[str, Any] = {"fast_path": percentiles(timed(fast, iters))}
    # Read back over netlink: the kernel holds exactly the last plan's classes (and the enforcer's model).
    kernel = backend.read_state().classes
    want = {(o.interface, o.classid): o.state() for o in _changes(spec, enf, state["step"])}
    out["fast_path"]["verified_read_back"] = all(kernel.get(k) == v for k, v in want.items()) and (
        kernel == enf.state.classes
    )
    out["naive_pyroute2"] = percentiles(timed(naive, iters))
    out["tc_subprocess_per_class"] = percentiles(timed(tc_each, max(5, iters // 10)))
    out["tc_batch_subprocess"] = percentiles(timed(tc_batch, max(5, iters // 4)))
    enf.reconcile()
    return out


class FastStatsSource:
    """shaping.monitor's ClassStatsSource over shaping.enforce.FastStats (struct-decoded netlink dumps)."""

    def __init__(self, interfaces: Sequence[str], netns: str | None, ipr: Any) -> None:
        from shaping.enforce.fast_stats import FastStats

        self.names = {int(ipr.link_lookup(ifname=n)[0]): n for n in interfaces}
        self.fast = FastStats(netns)

    def read_classes(self) -> dict[int, Any]:
        from shaping.monitor.tcstats import ClassCounters

        stats = self.fast.read_classes(list(self.names))
        return {
            k: ClassCounters(v.bytes, v.packets, v.drops, v.overlimits, v.backlog, v.qlen) for k, v in stats.items()
        }

    def read_interfaces(self) -> dict[str, Any]:
        from shaping.monitor.tcstats import InterfaceCounters

        links = self.fast.read_links(list(self.names))
        return {
            self.names[i]: InterfaceCounters(
                s.rx_bytes, s.tx_bytes, s.rx_packets, s.tx_packets, s.rx_dropped, s.tx_dropped
            )
            for i, s in links.items()
        }

    def close(self) -> None:
        self.fast.close()


def bench_observe(
    spec: TenantSpec, enf: KernelEnforcer, iters: int
) -> tuple[dict[str, Any], Callable[[], torch.Tensor]]:
    """Time one observation: H2's Monitor over pyroute2-decoded counters and over FastStats; raw dumps as well."""
    from shaping.enforce.fast_stats import FastStats

    iface, ns = enf.target.interfaces, enf.target.netns
    backend = enf.backend
    assert isinstance(backend, NetlinkBackend)
    idx = [int(backend.ipr.link_lookup(ifname=n)[0]) for n in iface]
    fast = FastStats(ns)
    out: dict[str, Any] = {
        "pyroute2_class_dump": percentiles(timed(lambda _: [backend.ipr.get_classes(index=i) for i in idx], iters)),
        "fast_stats_dump": percentiles(timed(lambda _: (fast.read_classes(idx), fast.read_links(idx)), iters)),
    }
    fast.close()
    try:
        from shaping.monitor.monitor import Monitor
        from shaping.monitor.tcstats import NetlinkClassStats
    except ImportError:
        out["monitor"] = "shaping.monitor not importable: observation = fast_stats_dump"
        layout = ObservationLayout(spec)
        fs = FastStats(ns)
        return out, lambda: (fs.read_classes(idx), torch.zeros(layout.size))[1]
    classids = [enf.target.classid(i) for i in range(len(spec.classes))]
    slow = Monitor(spec, NetlinkClassStats(iface, ns), classids)
    slow.sample()
    out["monitor_pyroute2"] = percentiles(timed(lambda _: slow.sample(), iters))
    slow.close()
    monitor = Monitor(spec, FastStatsSource(iface, ns, backend.ipr), classids)
    monitor.sample()
    out["monitor_fast_stats"] = percentiles(timed(lambda _: monitor.sample(), iters))
    return out, lambda: monitor.sample().obs


class FusedActor:
    """ActorCritic's deterministic ``act`` for one observation in numpy (float32 MLP, same masking).

    torch spends most of a single-observation forward in per-op dispatch (~10 ops); the same maths
    in numpy is several times cheaper. Built from a trained model, checked against it in ``bench_infer``.
    """

    def __init__(self, model: Any) -> None:
        import numpy as np

        norm = model.obs_norm
        self.mean = norm.mean.double().numpy()
        self.scale = 1.0 / np.sqrt(norm.var.double().numpy() + norm.epsilon)
        self.clip = float(norm.clip)
        layers = [m for m in model.actor if isinstance(m, torch.nn.Linear)]
        self.weights = [m.weight.detach().float().numpy().T.copy() for m in layers]
        self.biases = [m.bias.detach().float().numpy().copy() for m in layers]
        self.index = model._index.numpy()
        self.allowed = model._allowed.numpy()

    def act(self, obs: Any) -> Any:
        """(D,) action indices of one raw observation (numpy array)."""
        import numpy as np

        x = np.clip((obs - self.mean) * self.scale, -self.clip, self.clip).astype(np.float32)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            x = np.tanh(x @ w + b)
        z = x @ self.weights[-1] + self.biases[-1]
        return np.where(self.allowed, z[self.index], -np.inf).argmax(-1)


def bench_infer(spec: TenantSpec, iters: int) -> tuple[dict[str, Any], Callable[[torch.Tensor], Any]]:
    """Time ActorCritic.act on one observation (one thread, inference mode) and the fused numpy equivalent."""
    from shaping.agents.ppo import ActorCritic

    torch.set_num_threads(1)
    layout = ObservationLayout(spec)
    model = ActorCritic(layout.size, ActionLayout(spec).nvec.tolist()).eval()
    fused = FusedActor(model)
    obs = torch.zeros(layout.size)
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randn(layout.size, generator=gen) * 3 for _ in range(100)]
    agree = all(bool((fused.act(o.double().numpy()) == model.act(o).numpy()).all()) for o in samples)

    def infer(o: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.act(o)

    def infer_fused(o: torch.Tensor) -> Any:
        return fused.act(o.numpy())

    out: dict[str, Any] = {"actor_critic_act": percentiles(timed(lambda _: infer(obs), iters, warmup=20))}
    out["fused_numpy_act"] = percentiles(timed(lambda _: infer_fused(obs), iters, warmup=20))
    out["fused_numpy_act"]["same_actions_as_act"] = agree
    out.update({"obs_dim": layout.size, "threads": torch.get_num_threads()})
    return out, infer_fused if agree else infer


def bench_loop(
    spec: TenantSpec,
    enf: KernelEnforcer,
    observe: Callable[[], torch.Tensor],
    infer: Callable[[torch.Tensor], Any],
    iters: int,
    hz: float = 10.0,
) -> dict[str, Any]:
    """Process CPU time of observe + infer + apply (a 16-class change each step) at ``hz``, as a share of one core."""
    period = 1.0 / hz
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(iters):
        t0 = time.perf_counter()
        infer(observe())
        enf.apply(bench_plan(spec, 1000 + k))
        time.sleep(max(0.0, period - (time.perf_counter() - t0)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"hz": hz, "iterations": iters, "cpu_s": round(cpu, 4), "wall_s": round(wall, 3),
            "core_fraction": round(cpu / wall, 4)}  # fmt: skip


def run(iters: int = 200, n_classes: int = 16, loop_iters: int = 50, prefix: str = "fse-bench") -> dict[str, Any]:
    """Build the namespace pair, run every measurement, tear everything down; return the results."""
    if os.geteuid() != 0:
        raise PermissionError("bench_control needs root (network namespaces, tc, netlink)")
    spec = bench_spec(n_classes)
    result: dict[str, Any] = {"classes_changed_per_plan": n_classes, "iters": iters, "cpu_count": os.cpu_count()}
    with netns_pair(prefix, (20,)) as pair:
        target = target_from_spec(spec, EnforceConfig(interfaces=pair.a_links, netns=pair.a))
        with KernelEnforcer(spec, target) as enf:
            enf.apply(bench_plan(spec, 0))
            result["apply"] = bench_apply(spec, enf, pair.a, iters)
            result["observe"], observe = bench_observe(spec, enf, iters)
            result["inference"], infer = bench_infer(spec, iters * 5)
            result["loop"] = bench_loop(spec, enf, observe, infer, loop_iters)
            fused = result["inference"]["fused_numpy_act"]["same_actions_as_act"]
            result["loop"]["steps"] = (
                "observe (monitor_fast_stats) + "
                + ("fused_numpy_act" if fused else "actor_critic_act")
                + " + apply (16-class change, fast path)"
            )
            enf.teardown()
    result["targets"] = {
        "apply_p50_ms<=1": result["apply"]["fast_path"]["p50_ms"] <= 1.0,
        "apply_p99_ms<=3": result["apply"]["fast_path"]["p99_ms"] <= 3.0,
        "apply_cpu_p99_ms<=3": result["apply"]["fast_path"]["cpu_p99_ms"] <= 3.0,
        "inference_p50_us<=100 (ActorCritic.act)": result["inference"]["actor_critic_act"]["p50_ms"] <= 0.1,
        "inference_p50_us<=100 (fused numpy)": result["inference"]["fused_numpy_act"]["p50_ms"] <= 0.1,
        "loop_core_fraction<=0.05": result["loop"]["core_fraction"] <= 0.05,
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=200, help="timed applies per method (tc per class: iters/10)")
    ap.add_argument("--classes", type=int, default=16, help="classes changed by each plan")
    ap.add_argument("--loop-iters", type=int, default=50, help="control steps of the 10 Hz CPU measurement")
    ap.add_argument("--prefix", default="fse-bench", help="namespace name prefix")
    args = ap.parse_args(argv)
    try:
        out = run(args.iters, args.classes, args.loop_iters, args.prefix)
    except PermissionError as err:
        print(json.dumps({"error": str(err)}))
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
