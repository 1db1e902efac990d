"""Benchmark the `fedshape` CLI's start-up: wall time of `--help` and of a read against a running service.

Each command is the installed console script run as a user runs it (a fresh interpreter every time), so the
time is what a person waits: interpreter start, imports (never torch on this path), one call. The service runs
in its own process (`fedshape serve`, plaintext loopback; experiments.bench_api.Service) with one tenant; the
read is `fedshape provider tenants`. Prints one JSON object with the median, min and max of each command over
--repeats runs, after one warm-up run of each (the page cache, not the code, is what a first run measures).

    python -m experiments.bench_cli                  # 9 runs of each
    python -m experiments.bench_cli --repeats 21
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.bench_api import Service

#: The target of the CLI's start-up (`--help` and a read), seconds.
TARGET_S = 0.5


def fedshape_command() -> list[str]:
    """The console script beside this interpreter, else `python -m shaping.cli`."""
    script = Path(sys.executable).with_name("fedshape")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "shaping.cli"]


def timed_runs(argv: list[str], repeats: int) -> list[float]:
    """Wall seconds of `repeats` runs of argv (each must exit 0), after one untimed warm-up run."""
    out = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        if i:
            out.append(elapsed)
    return out


def summary(times: list[float]) -> dict[str, float]:
    """Median, min and max, in seconds."""
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3)}  # fmt: skip


def run(repeats: int) -> dict[str, object]:
    """Start a service, time both commands, stop it; the JSON-ready result."""
    cli = fedshape_command()
    directory = Path(tempfile.mkdtemp(prefix="fedshape-bench-cli-"))
    svc = Service(directory, tls=False, workers=2)
    try:
        base = [*cli, "--target", svc.target, "--as", "provider/ops"]
        subprocess.run([*base, "provider", "create", "acme", "--cap", "100"], capture_output=True, text=True,
                       timeout=60, check=True)  # fmt: skip
        help_s = summary(timed_runs([*cli, "--help"], repeats))
        read_s = summary(timed_runs([*base, "provider", "tenants"], repeats))
    finally:
        svc.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return {"repeats": repeats, "command": cli, "help": help_s, "read": read_s, "target_s": TARGET_S,
            "met": help_s["median_s"] <= TARGET_S and read_s["median_s"] <= TARGET_S}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON."""
    p = argparse.ArgumentParser(prog="python -m experiments.bench_cli", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9, help="timed runs of each command (default 9)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    print(json.dumps(run(args.repeats), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
