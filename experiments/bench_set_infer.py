"""Benchmark the set policy's numpy inference: one greedy decision, SetNumpyActor.act on one observation.

A freshly initialized (seeded) default-size model (d 64, 2 layers, 4 heads) bound to the default scenario's
first tenant widened to each layout (inference time does not depend on the weights), envelope applied.
Two paths, interleaved run by run so that both see the same load: ``one``, the single-observation path
``act`` takes, and ``general``, the batched path on that observation (what ``act`` ran before the
single-observation path). Prints one JSON object: per layout and path the median over runs of each
statistic of ``shaping.agents.set_numpy.benchmark`` (wall and thread-CPU percentiles) and each run's p50,
with the load averages before and after. Run it single-threaded:

    OMP_NUM_THREADS=1 python -m experiments.bench_set_infer                  # 16x4 and 4x2, 5 runs
    OMP_NUM_THREADS=1 python -m experiments.bench_set_infer --layouts 16x4 --runs 9 --n 4000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import torch

from shaping.agents.set_numpy import SetNumpyActor, benchmark, widened_spec
from shaping.agents.set_policy import SetActorCritic, bind
from shaping.sim.scenarios import load_scenario
from shaping.spec import scenario_specs


def _layout(text: str) -> tuple[int, int]:
    classes, paths = text.lower().split("x")
    return int(classes), int(paths)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", nargs="+", default=["16x4", "4x2"], help="CLASSESxPATHS of each tenant")
    ap.add_argument("--runs", type=int, default=5, help="runs per layout and path (medians over them)")
    ap.add_argument("--n", type=int, default=2000, help="timed calls per run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    base = scenario_specs(load_scenario("default"))[0]
    torch.manual_seed(args.seed)
    model = SetActorCritic().eval()
    actors = {text: SetNumpyActor(bind(model, widened_spec(base, *_layout(text)))) for text in args.layouts}
    paths = {
        "one": lambda a: a.act,
        "general": lambda a: lambda obs: a._logits(*a._encode(obs)).argmax(-1),
    }
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {t: {p: [] for p in paths} for t in actors}
    for run in range(args.runs):
        for text, actor in actors.items():
            for name, make in paths.items():
                runs[text][name].append(benchmark(actor, n=args.n, seed=args.seed + run, call=make(actor)))
    out: dict[str, Any] = {"layouts": {}}
    for text, by_path in runs.items():
        out["layouts"][text] = {
            name: {
                **{key: round(statistics.median(r[key] for r in stats), 1) for key in stats[0] if key != "loadavg_1m"},
                "runs_p50_us": [round(r["p50_us"], 1) for r in stats],
            }
            for name, stats in by_path.items()
        }
    out.update(
        runs=args.runs,
        n=args.n,
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        cpu_count=os.cpu_count(),
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
    )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
