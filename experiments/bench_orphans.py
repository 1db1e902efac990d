"""Benchmark what a killed federated run leaves behind: SIGKILL `python -m experiments.federated` during its rounds,
then count its descendants (the simulation child, Ray's GCS, raylet, agents and workers) until none is left.

The run's process tree is read from /proc just before the kill (every descendant of the run, by pid and start
time, so a reused pid does not count). Prints one JSON object: seconds from the kill until the last of them
was gone (target: at most 10 s), and how many there were.

    python -m experiments.bench_orphans                  # kill 25 s after the start (round 2 or so)
    python -m experiments.bench_orphans --kill-after 40
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.processes import descendants, start_time

#: The target: every descendant gone within this many seconds of the kill.
TARGET_S = 10.0


def run(kill_after: float, limit: float) -> dict[str, object]:
    """Start the run, kill it after kill_after seconds, wait up to limit seconds for its descendants to go."""
    out_dir = Path(tempfile.mkdtemp(prefix="fedshape-orphans-"))
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    argv = [sys.executable, "-m", "experiments.federated", "fl.rounds=50", "compare_local=false",
            "compare_centralized=false", "yardstick.enabled=false", f"output.dir={out_dir}",
            f"hydra.run.dir={out_dir / 'hydra'}"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    time.sleep(kill_after)
    family = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    proc.wait()
    left = dict(family)
    while left and time.monotonic() - killed_at < limit:
        left = {p: t for p, t in left.items() if start_time(p) == t}
        time.sleep(0.1)
    gone_s = time.monotonic() - killed_at
    for pid in left:  # past the limit: clean up what the run failed to, so the benchmark itself leaves nothing
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"kill_after_s": kill_after, "descendants_at_kill": len(family), "left_after_limit": len(left),
            "gone_s": round(gone_s, 2) if not left else None, "target_s": TARGET_S,
            "met": not left and gone_s <= TARGET_S}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON."""
    p = argparse.ArgumentParser(prog="python -m experiments.bench_orphans", description=__doc__.splitlines()[0])
    p.add_argument("--kill-after", type=float, default=25.0, help="seconds from the start to the kill (default 25)")
    p.add_argument("--limit", type=float, default=120.0, help="seconds to wait for the descendants (default 120)")
    args = p.parse_args(argv)
    if args.kill_after <= 0 or args.limit <= 0:
        p.error("--kill-after and --limit must be > 0")
    print(json.dumps(run(args.kill_after, args.limit), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
