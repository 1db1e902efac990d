"""Federation round-time benchmark: SecAgg+ against plain FedAvg, and a round with many tenants.

``python -m experiments.bench_fl`` prints one JSON object. Each configuration runs through Flower's
simulation engine (the same apps and run_simulation call as experiments.federated) with a tiny local
budget, so the round time is the federation's overhead (messages, SecAgg+ key exchange, masking,
unmasking) plus a little training; the fit time of rounds after the first (which pays the actors'
imports) is reported, median over those rounds.

    python -m experiments.bench_fl                          # 10 tenants x 3 rounds each way, then 100 tenants
    python -m experiments.bench_fl --large 0 --rounds 4     # skip the 100-tenant round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.federated import SimulationConfig, run_flower
from shaping.sim.scenarios import load_scenario

SCENARIOS = ("default", "datacenter", "edge_gaming", "small_congested", "single_path")


def tenant_cycle(n: int, num_envs: int) -> list[dict[str, Any]]:
    """n tenants cycling through every tenant of every scenario (several nodes may share one)."""
    every = [(sc, t.name) for sc in SCENARIOS for t in load_scenario(sc).tenants]
    return [{"scenario": every[i % len(every)][0], "tenant": every[i % len(every)][1], "num_envs": num_envs}
            for i in range(n)]  # fmt: skip


def bench_config(n: int, rounds: int, secure: bool, out: Path) -> dict[str, Any]:
    """Flat run config of a benchmark run: tiny local training and evaluation."""
    cfg: dict[str, Any] = {
        "tenants": json.dumps(tenant_cycle(n, 2)), "fl.rounds": rounds, "fl.min_fit_clients": n,
        "train.local_iterations": 1, "train.num_steps": 4, "train.update_epochs": 1, "train.num_minibatches": 1,
        "evaluation.envs": 1, "evaluation.steps": 1, "output.results_file": str(out / "rounds.json"),
        "output.checkpoint_dir": "",
    }  # fmt: skip
    if secure:
        cfg.update({"privacy.secure_aggregation": True})
    return cfg


def run_one(n: int, rounds: int, secure: bool, sim: SimulationConfig) -> dict[str, Any]:
    """One benchmark run: per-round fit and round times, and the wall time including Ray's start."""
    with tempfile.TemporaryDirectory(prefix="bench_fl_") as tmp:
        start = time.perf_counter()
        res = run_flower(bench_config(n, rounds, secure, Path(tmp)), n, sim)
        wall = time.perf_counter() - start
    fit = [r["fit_s"] for r in res["rounds"]]
    steady = fit[1:] or fit
    out = {"tenants": n, "secagg": secure, "rounds": len(fit), "fit_s": [round(x, 2) for x in fit],
            "round_s": [round(r["round_s"], 2) for r in res["rounds"]], "median_fit_s": statistics.median(steady),
            "wall_s": round(wall, 1)}  # fmt: skip
    # Each run's result as soon as it is known (stderr), so a later run that fails loses nothing.
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=10, help="tenants of the SecAgg+ vs FedAvg comparison")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each comparison run")
    p.add_argument("--large", type=int, default=100, help="tenants of the one-round run (0: skip)")
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per client actor")
    args = p.parse_args(argv)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sim = SimulationConfig(client_num_cpus=args.client_cpus, ray_num_cpus=os.cpu_count() or 2)
    plain = run_one(args.small, args.rounds, False, sim)
    secure = run_one(args.small, args.rounds, True, sim)
    out: dict[str, Any] = {
        "fedavg": plain, "secaggplus": secure,
        "secagg_over_fedavg": round(secure["median_fit_s"] / plain["median_fit_s"], 2),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    if args.large > 0:
        out["large"] = run_one(args.large, 1, False, sim)
    print(json.dumps(out, indent=1), flush=True)
    return out


if __name__ == "__main__":
    main()
