"""Benchmark the batched simulator: tenant-steps per second across batch sizes, CPU and CUDA.

A tenant-step is one tenant of one environment advanced by one control interval (with all its
fluid sub-steps). Prints one JSON object; keys ending in `steps_per_s` are medians over repeats.

    python -m experiments.bench_sim                       # default scenario, 1..65536: eager, compiled, kernel
    python -m experiments.bench_sim --batches 1 64 4096 --repeats 3 --no-compile --no-kernel

Variants: `eager` (torch ops), `compiled` (torch.compile of the sub-step, the preparation and the
accounting), `kernel` (CPU only: the sub-steps in the C++ kernel of shaping.sim.cpu_kernel, the
preparation and accounting compiled, or eager with --no-compile).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from shaping.baselines import get_baseline
from shaping.sim.scenarios import load_scenario
from shaping.sim import cpu_kernel
from shaping.sim.simulator import Simulator
from shaping.spec import stack_plans

DEFAULT_BATCHES = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    scenario: str,
    batch: int,
    device: str,
    compiled: bool,
    repeats: int,
    min_seconds: float,
    cpu_kernel: bool = False,
) -> dict[str, Any]:
    """Median tenant-steps/s of one configuration, with the compile (warm-up) time."""
    cfg = load_scenario(scenario)
    dev = torch.device(device)
    sim = Simulator(cfg, batch_size=batch, device=dev, seed=0, compile=compiled, cpu_kernel=cpu_kernel)
    st = sim.tensors
    base = get_baseline("static_priority")
    plans = [base.plan(s) for s in st.specs]
    plan = stack_plans([plans], st.n_classes, dev)
    plan = type(plan)(*(x.expand(batch, *x.shape[1:]).contiguous() for x in plan))
    tenants = st.n_tenants
    with torch.inference_mode():
        t0 = time.perf_counter()
        sim.step(plan)
        sim.step(plan)
        _sync(dev)
        warmup = time.perf_counter() - t0
        rates = []
        for _ in range(repeats):
            n, t0 = 0, time.perf_counter()
            while True:
                sim.step(plan)
                n += 1
                _sync(dev)
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    break
            rates.append(n * batch * tenants / elapsed)
    return {
        "device": device,
        "compiled": compiled,
        "cpu_kernel": cpu_kernel,
        "batch": batch,
        "tenants": tenants,
        "warmup_s": round(warmup, 2),
        "tenant_steps_per_s": statistics.median(rates),
        "runs": [round(r) for r in rates],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--batches", type=int, nargs="+", default=DEFAULT_BATCHES)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median reported)")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="minimum length of one timed run")
    ap.add_argument("--no-compile", action="store_true",
                    help="no torch.compile (the kernel variant then runs eager around the kernel)")
    ap.add_argument("--compile-batches", type=int, nargs="+", default=None,
                    help="batch sizes for the compiled variant (default: the largest two)")
    ap.add_argument("--no-kernel", action="store_true", help="skip the C++ sub-step kernel (CPU)")
    ap.add_argument("--kernel-batches", type=int, nargs="+", default=None,
                    help="batch sizes for the kernel variant (default: the largest three)")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    args = ap.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    cfg = load_scenario(args.scenario)
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "tenants": len(cfg.tenants),
        "classes_max": max(len(t.classes) for t in cfg.tenants),
        "paths": len(cfg.paths),
        "substeps": cfg.substeps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [],
    }
    compile_batches = args.compile_batches or sorted(args.batches)[-2:]
    kernel_batches = args.kernel_batches or sorted(args.batches)[-3:]
    for device in devices:
        variants = ["eager"] + ([] if args.no_compile else ["compiled"])
        if device == "cpu" and not args.no_kernel:
            try:
                cpu_kernel.ensure_built()
                variants.append("kernel")
            except cpu_kernel.KernelUnavailable as err:
                out["cpu_kernel_unavailable"] = str(err)
                print(f"[bench_sim] skipping the kernel variant: {err}", file=sys.stderr, flush=True)
        for variant in variants:
            batches = {"eager": args.batches, "compiled": compile_batches, "kernel": kernel_batches}[variant]
            for batch in (b for b in args.batches if b in batches):
                print(f"[bench_sim] {device} {variant} batch={batch}", file=sys.stderr, flush=True)
                compiled = variant == "compiled" or (variant == "kernel" and not args.no_compile)
                r = measure(args.scenario, batch, device, compiled, args.repeats, args.min_seconds,
                            cpu_kernel=variant == "kernel")  # fmt: skip
                r["variant"] = variant
                out["results"].append(r)
                out[f"{device}_{variant}_b{batch}_tenant_steps_per_s"] = round(r["tenant_steps_per_s"])
        best = max((r for r in out["results"] if r["device"] == device), key=lambda r: r["tenant_steps_per_s"])
        out[f"best_{device}_tenant_steps_per_s"] = round(best["tenant_steps_per_s"])
        out[f"best_{device}_config"] = {"batch": best["batch"], "variant": best["variant"]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
