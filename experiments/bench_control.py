"""Control-path speed: applying a 16-class plan (naive pyroute2, FedShape's fast path, tc), observing, inferring.

Run as root: ``python -m experiments.bench_control [--iters 200]``; prints one JSON object. It builds
its own namespace pair (fse-bench-a/b, 10.200.20.0/24) and removes it afterwards. Every measurement
is the product's own code path, nothing bench-only. Keys (``*_ms`` entries hold wall and thread-CPU
p50/p99 in milliseconds and the sample count ``n``):

- ``apply``: ``fast_path`` (KernelEnforcer.apply, with ``verified_read_back``), ``naive_pyroute2``,
  ``tc_subprocess_per_class``, ``tc_batch_subprocess``;
- ``observe``: ``pyroute2_class_dump``, ``fast_stats_dump`` (raw dumps), ``monitor_pyroute2``
  (Monitor over NetlinkClassStats(fast=False)), ``monitor_fast_stats`` (NetlinkClassStats' default,
  FastStats), ``monitor_agent`` (plus sock_diag RTTs, as fedshape-agent builds it);
- ``inference``: ``model_policy_decide`` (ModelPolicy.decide on one monitor observation, greedy: the
  loop's per-step call, NumpyActor inference + decoded plan), ``numpy_actor_act`` (its inference alone,
  with ``same_as_torch``: actions and log-probabilities equal torch's on 100 random observations),
  ``model_policy_decide_new_plan`` (epsilon = 1: a new action, so a plan decode, every call),
  ``actor_critic_act`` and ``model_policy_decide_torch`` (torch, for comparison), ``obs_dim``,
  ``hidden_sizes``, ``threads``;
- ``loop``: the product ControlLoop (KernelBackend over the agent's Monitor and the KernelEnforcer,
  a greedy ModelPolicy, guard, watchdog, metrics) at 10 Hz: process CPU time per wall second in
  steady state, after ``warmup_steps`` whose CPU (the first plan's kernel changes and read-back) is
  ``startup_cpu_s`` (``core_fraction``; ``core_fraction_with_children`` adds child processes such as
  nft), overruns, median step time; ``loop_counters_only``: the same over the counters-only Monitor (no TCP RTTs);
  ``loop_exploring``: the agent's loop with epsilon = 1 (a new plan, so kernel changes, every step);
- ``targets``: each of the control loop's speed targets (apply, inference, loop CPU share), met or not;
  ``load_average_1m`` at the start.
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

import numpy as np
import torch

from shaping.agents import ActorCritic
from shaping.baselines import static_priority_plan
from shaping.config import ClassConfig, EntityConfig, PathConfig, ScenarioConfig, TenantConfig
from shaping.control import ControlLoop, LoopConfig, ModelPolicy, Observed
from shaping.control.kernel_backend import KernelBackend
from shaping.control.watchdog import Mode
from shaping.enforce import EnforceConfig, FastStats, HtbClass, KernelEnforcer, NetlinkBackend, target_from_spec
from shaping.enforce.kinds.htb import desired_classes
from shaping.enforce.testing import netns_pair
from shaping.monitor.monitor import Monitor
from shaping.monitor.rtt import SockDiagRtt
from shaping.monitor.tcstats import NetlinkClassStats
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


def bench_observe(spec: TenantSpec, enf: KernelEnforcer, iters: int) -> tuple[dict[str, Any], dict[str, Monitor]]:
    """Time one observation: the product Monitor (FastStats-read counters; with TCP RTTs as the agent
    builds it) and over pyroute2-decoded counters; the raw dumps as well.

    Returns:
        The timings, and the monitors left open for the loop: "monitor_agent", "monitor_fast_stats".
    """
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
    classids = [enf.target.classid(i) for i in range(len(spec.classes))]
    monitors = {
        "monitor_pyroute2": Monitor(spec, NetlinkClassStats(iface, ns, fast=False), classids),
        "monitor_fast_stats": Monitor(spec, NetlinkClassStats(iface, ns), classids),
        # as shaping.control.cli builds it for fedshape-agent: FastStats counters and sock_diag RTTs
        "monitor_agent": Monitor(spec, NetlinkClassStats(iface, ns), classids, rtt=SockDiagRtt(ns)),
    }
    for key, monitor in monitors.items():

        def sample(_: int, m: Monitor = monitor) -> Observed:
            return m.sample()

        monitor.sample()  # the first sample only sets the baseline counters
        out[key] = percentiles(timed(sample, iters))
    monitors.pop("monitor_pyroute2").close()
    return out, monitors


def _same_as_torch(policy: ModelPolicy, model: ActorCritic, n: int = 100) -> bool:
    """The numpy actor's actions equal ``ActorCritic.act``'s and its log-probabilities torch's, on n observations."""
    actor = policy.numpy_actor
    if actor is None:
        return False
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(n, model.obs_dim, generator=gen) * 3
    actions, logp = actor.act_and_log_prob(obs.numpy())
    with torch.inference_mode():
        want = model.act(obs)
        _, want_logp, _, _ = model.get_action_and_value(model.obs_norm(obs), want)
    return bool((actions == want.numpy()).all()) and bool(np.allclose(logp, want_logp.numpy(), rtol=1e-5, atol=1e-5))


def bench_infer(spec: TenantSpec, observed: Observed, iters: int) -> dict[str, Any]:
    """Time inference on one observation: the product path (ModelPolicy.decide, whose inference is a
    NumpyActor), the bare NumpyActor, and torch (``ActorCritic.act``, ModelPolicy on its torch path)."""
    torch.set_num_threads(1)
    layout = ObservationLayout(spec)
    model = ActorCritic(layout.size, ActionLayout(spec).nvec.tolist()).eval()
    policy = ModelPolicy(model, spec)
    actor = policy.numpy_actor
    assert actor is not None, "ActorCritic must take the numpy path"
    obs = observed.obs
    obs_np = obs.numpy()

    def torch_act(_: int) -> torch.Tensor:
        with torch.inference_mode():
            return model.act(obs)

    exploring = ModelPolicy(model, spec, epsilon=1.0, generator=torch.Generator().manual_seed(1))
    on_torch = ModelPolicy(model, spec, fast=False)
    out: dict[str, Any] = {
        "model_policy_decide": percentiles(timed(lambda _: policy.decide(observed), iters, warmup=20)),
        "numpy_actor_act": percentiles(timed(lambda _: actor.act(obs_np), iters, warmup=20)),
        "model_policy_decide_new_plan": percentiles(timed(lambda _: exploring.decide(observed), iters, warmup=20)),
        "actor_critic_act": percentiles(timed(torch_act, iters, warmup=20)),
        "model_policy_decide_torch": percentiles(timed(lambda _: on_torch.decide(observed), iters, warmup=20)),
    }
    out["numpy_actor_act"]["same_as_torch"] = _same_as_torch(policy, model)
    out.update({"obs_dim": layout.size, "hidden_sizes": list(model.hidden_sizes), "threads": torch.get_num_threads()})
    return out


def bench_loop(
    spec: TenantSpec, enf: KernelEnforcer, monitor: Monitor, policy: ModelPolicy, iters: int, hz: float = 10.0,
    warmup: int = 10,
) -> dict[str, Any]:
    """Run the product ControlLoop (KernelBackend over ``monitor`` and ``enf``, ``policy``, guard, watchdog,
    metrics) for ``warmup`` then ``iters`` intervals at ``hz``; the steady-state CPU time of the last
    ``iters``, and that of child processes (nft), per second. The warm-up (the first plan's HTB and nft
    changes, the kernel read-back) is reported apart as ``startup_cpu_s``: the target is the running cost."""
    loop = ControlLoop(KernelBackend(spec, monitor, enf), policy, static_priority_plan(spec),
                       config=LoopConfig(interval_s=1.0 / hz))  # fmt: skip
    # process_time (ns resolution) for this process, os.times (10 ms ticks) only for child processes.
    s0 = time.process_time()
    try:
        loop.run(warmup)
        c0, t0, wall0 = time.process_time(), os.times(), time.perf_counter()
        steps = loop.run(iters)
        c1, t1, wall = time.process_time(), os.times(), time.perf_counter() - wall0
    finally:
        loop.runner.close()  # not loop.close(): the monitor and the enforcer stay open for the caller
    startup = c0 - s0
    cpu = c1 - c0
    children = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    measured = list(loop.history)[-iters:]
    step_ms = sorted(r.seconds * 1e3 for r in measured)
    return {
        "hz": hz, "iterations": steps, "epsilon": policy.epsilon,
        "adaptive_steps": sum(r.mode is Mode.ADAPTIVE for r in measured),
        "overruns": loop.metrics.value("fedshape_agent_overruns_total", tenant=spec.name) or 0.0,
        "warmup_steps": warmup, "startup_cpu_s": round(startup, 4),
        "step_p50_ms": round(statistics.median(step_ms), 3), "cpu_s": round(cpu, 4),
        "children_cpu_s": round(children, 4), "wall_s": round(wall, 3), "core_fraction": round(cpu / wall, 4),
        "core_fraction_with_children": round((cpu + children) / wall, 4),
    }  # fmt: skip


def run(iters: int = 200, n_classes: int = 16, loop_iters: int = 50, prefix: str = "fse-bench") -> dict[str, Any]:
    """Build the namespace pair, run every measurement, tear everything down; return the results."""
    if os.geteuid() != 0:
        raise PermissionError("bench_control needs root (network namespaces, tc, netlink)")
    spec = bench_spec(n_classes)
    result: dict[str, Any] = {"classes_changed_per_plan": n_classes, "iters": iters, "cpu_count": os.cpu_count(),
                              "load_average_1m": round(os.getloadavg()[0], 2)}  # fmt: skip
    with netns_pair(prefix, (20,)) as pair:
        target = target_from_spec(spec, EnforceConfig(interfaces=pair.a_links, netns=pair.a))
        with KernelEnforcer(spec, target) as enf:
            enf.apply(bench_plan(spec, 0))
            result["apply"] = bench_apply(spec, enf, pair.a, iters)
            result["observe"], monitors = bench_observe(spec, enf, iters)
            agent = monitors["monitor_agent"]
            try:
                result["inference"] = bench_infer(spec, agent.sample(), iters * 5)
                model = ActorCritic(ObservationLayout(spec).size, ActionLayout(spec).nvec.tolist())
                result["loop"] = bench_loop(spec, enf, agent, ModelPolicy(model, spec), loop_iters)
                counters = monitors["monitor_fast_stats"]
                result["loop_counters_only"] = bench_loop(spec, enf, counters, ModelPolicy(model, spec), loop_iters)
                explore = ModelPolicy(model, spec, epsilon=1.0, generator=torch.Generator().manual_seed(2))
                result["loop_exploring"] = bench_loop(spec, enf, agent, explore, loop_iters)
            finally:
                for monitor in monitors.values():
                    monitor.close()
            enf.teardown()
    inference = result["inference"]
    result["targets"] = {
        "apply_p50_ms<=1": result["apply"]["fast_path"]["p50_ms"] <= 1.0,
        "apply_p99_ms<=3": result["apply"]["fast_path"]["p99_ms"] <= 3.0,
        "apply_cpu_p99_ms<=3": result["apply"]["fast_path"]["cpu_p99_ms"] <= 3.0,
        "inference_p50_us<=100 (NumpyActor.act)": inference["numpy_actor_act"]["p50_ms"] <= 0.1,
        "inference_p50_us<=100 (ModelPolicy.decide)": inference["model_policy_decide"]["p50_ms"] <= 0.1,
        "inference_p50_us<=100 (ActorCritic.act, torch)": inference["actor_critic_act"]["p50_ms"] <= 0.1,
        "loop_core_fraction<=0.05": result["loop"]["core_fraction"] <= 0.05,
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
