"""The control loop at 10 Hz with a new random plan every step: rates, priorities, DSCP marks, drops and paths.

Run as root: ``python -m experiments.bench_control_explore [--steps 600]``; prints one JSON object.
It builds its own namespace pair (fse-explore-a/b, two veth paths on 10.200.21-22.0/24) and
removes it afterwards. The loop is the product's: ControlLoop over a KernelBackend (the agent's
Monitor, the KernelEnforcer), guard, watchdog and metrics; only the policy is a script drawing a
random plan every step, so every step changes HTB classes, nftables rules (marks and drops) and
policy routing (paths), the worst case of an exploring agent. Keys:

- ``overruns``: steps whose work exceeded the interval (``fedshape_agent_overruns_total``);
- ``step_ms``: p50, p99 and max of a step's time (observe to apply, ``StepRecord.seconds``);
- ``apply_ms``: the same for ``KernelEnforcer.apply`` alone, and ``apply_kinds``: in how many steps
  the apply changed each kind (htb, nft, routing);
- ``load_average_1m`` and ``cpu_count``: how busy the machine was (other work shares it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from shaping.baselines import static_priority_plan
from shaping.config import ClassConfig, EntityConfig, PathConfig, ScenarioConfig, TenantConfig
from shaping.control import ControlLoop, LoopConfig, ScriptedPolicy
from shaping.control.kernel_backend import KernelBackend
from shaping.enforce import ApplyResult, EnforceConfig, KernelEnforcer, target_from_spec
from shaping.enforce.testing import netns_pair
from shaping.monitor.monitor import Monitor
from shaping.monitor.rtt import SockDiagRtt
from shaping.monitor.tcstats import NetlinkClassStats
from shaping.spec import ClassShaping, ShapingPlan, TenantSpec, burst_bytes, tenant_spec

#: DSCP values a random plan picks from (best effort, AF11, AF21, AF31, AF41, EF).
DSCPS = (0, 10, 18, 26, 34, 46)
#: Drop probabilities a random plan picks from: most steps switch some class's drop rule on or off.
DROPS = (0.0, 0.0, 0.01, 0.05)


def explore_spec(n_classes: int) -> TenantSpec:
    """One tenant, two paths, ``n_classes`` TCP classes on ports 7000+i, no SLA (the guard keeps the plans)."""
    classes = [
        ClassConfig(name=f"c{i}", app=("gaming", "transactions", "video", "bulk", "web")[i % 5], ports=[7000 + i])
        for i in range(n_classes)
    ]
    tenant = TenantConfig(
        name="explore", cap_mbps=1000.0, entities=[EntityConfig(cidrs=["10.200.21.1/32"])], classes=classes
    )
    paths = [PathConfig(name="p0", capacity_mbps=1000.0), PathConfig(name="p1", capacity_mbps=1000.0)]
    return tenant_spec(ScenarioConfig(paths=paths, tenants=[tenant]), 0)


def random_plan(spec: TenantSpec, rng: np.random.Generator) -> ShapingPlan:
    """A plan with every class's rate, ceiling, priority, mark, drop probability and path drawn anew."""
    classes = []
    for _ in spec.classes:
        rate = float(rng.uniform(1.0, 50.0))
        ceil = rate * float(rng.uniform(1.0, 4.0))
        classes.append(ClassShaping(rate, ceil, burst_bytes(rate), int(rng.integers(0, 8)),
                                    int(rng.choice(DSCPS)), float(rng.choice(DROPS)),
                                    int(rng.integers(0, len(spec.paths)))))  # fmt: skip
    return ShapingPlan(spec.name, tuple(classes), 900.0)


def _ms(values: Sequence[float]) -> dict[str, float]:
    ms = sorted(v * 1e3 for v in values)
    return {"p50": round(statistics.median(ms), 2), "p99": round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 2),
            "max": round(ms[-1], 2)}  # fmt: skip


def run(steps: int = 600, n_classes: int = 8, hz: float = 10.0, seed: int = 0, prefix: str = "fse-explore"
        ) -> dict[str, Any]:  # fmt: skip
    """Build the namespaces, run ``steps`` exploring intervals at ``hz``, tear down; return the measurements."""
    if os.geteuid() != 0:
        raise PermissionError("bench_control_explore needs root (network namespaces, tc, nftables)")
    spec = explore_spec(n_classes)
    rng = np.random.default_rng(seed)
    policy = ScriptedPolicy(spec, lambda _obs: random_plan(spec, rng), name="random-plans")
    result: dict[str, Any] = {"steps": steps, "hz": hz, "classes": n_classes, "paths": len(spec.paths),
                              "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}  # fmt: skip
    applies: list[ApplyResult] = []
    with netns_pair(prefix, (21, 22)) as pair:
        target = target_from_spec(spec, EnforceConfig(interfaces=pair.a_links, netns=pair.a))
        enf = KernelEnforcer(spec, target)
        classids = [target.classid(i) for i in range(n_classes)]
        monitor = Monitor(spec, NetlinkClassStats(pair.a_links, netns=pair.a), classids, rtt=SockDiagRtt(pair.a))
        backend = KernelBackend(spec, monitor, enf, teardown_on_close=True)
        loop = ControlLoop(backend, policy, static_priority_plan(spec), config=LoopConfig(interval_s=1.0 / hz))

        def on_step(_: object) -> None:
            if backend.last_result is not None:
                applies.append(backend.last_result)

        try:
            loop.run(steps, on_step=on_step)
        finally:
            loop.close()
    records = list(loop.history)[-steps:]
    kinds: Counter[str] = Counter()
    for a in applies:
        kinds.update({op.kind for op in a.ops})
    result.update({
        "overruns": loop.metrics.value("fedshape_agent_overruns_total", tenant=spec.name) or 0.0,
        "modes": dict(Counter(r.mode.value for r in records)),
        "step_ms": _ms([r.seconds for r in records]),
        "apply_ms": _ms([a.elapsed_s for a in applies]),
        "apply_kinds": dict(kinds),
        "fast_htb_steps": sum(a.fast for a in applies),
    })  # fmt: skip
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print JSON; 2 without root."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="control intervals")
    ap.add_argument("--classes", type=int, default=8, help="traffic classes of the tenant")
    ap.add_argument("--hz", type=float, default=10.0, help="control rate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random plans")
    ap.add_argument("--prefix", default="fse-explore", help="namespace name prefix")
    args = ap.parse_args(argv)
    try:
        out = run(args.steps, args.classes, args.hz, args.seed, args.prefix)
    except PermissionError as err:
        print(json.dumps({"error": str(err)}))
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
