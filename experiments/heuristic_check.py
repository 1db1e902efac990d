"""adaptive_heuristic against every static baseline, scenario by scenario: ``python -m experiments.heuristic_check``.

    python -m experiments.heuristic_check --family heldout_wan_failure --family heldout_lte_backup_failure
    python -m experiments.heuristic_check --generate train_failover:0-11 --generate train_degraded:0-5
    python -m experiments.heuristic_check --handwritten          # conf/scenario files with a failure, a degradation
                                                                 # and a flash crowd added (see EVENTS)
    python -m experiments.heuristic_check --scenario default --json outputs/heuristic.json

Each row is one scenario: the SLA violation rate of its controlled tenants (shaping.evaluation.evaluate_policy,
same seeds and neighbours for every policy) under adaptive_heuristic and each baseline, the best baseline,
and whether the heuristic beats it. Scenarios of the committed held-out suite are named by family
(``--family``) or file name (``--scenario heldout_wan_failure_s0``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from shaping.baselines import BASELINES
from shaping.config import LoadEventConfig, PathEventConfig, ScenarioConfig
from shaping.evaluation import evaluate_policy
from shaping.policies import make_policy
from shaping.sim.generator import generate_scenario
from shaping.sim.scenarios import load_scenario
from shaping.sim.suite import load_suite, suite_dir

HEURISTIC = "adaptive_heuristic"
#: Hand-written scenarios that get EVENTS (those with at least two paths, outside the held-out ones).
HANDWRITTEN: tuple[str, ...] = ("default", "edge_gaming", "small_congested", "datacenter")
#: Events added to a hand-written scenario, on its first path, from step 100 to step 200.
EVENTS: dict[str, str] = {
    "failure": "the first path is down",
    "degradation": "the first path keeps 40% of its capacity, gains 30 ms and loses 2%",
    "flash_crowd": "the first tenant's web and video load triples",
}


def with_event(scenario: ScenarioConfig, kind: str) -> ScenarioConfig:
    """A copy of a scenario with one of EVENTS added, named ``<name>+<kind>``."""
    out = copy.deepcopy(scenario)
    first = out.paths[0].name
    if kind == "failure":
        out.path_events.append(PathEventConfig(path=first, start_step=100, end_step=200, capacity_factor=0.0))
    elif kind == "degradation":
        out.path_events.append(PathEventConfig(path=first, start_step=100, end_step=200, capacity_factor=0.4,
                                               extra_delay_ms=30.0, loss=0.02))  # fmt: skip
    else:
        tenant = out.tenants[0].name
        out.load_events.append(LoadEventConfig(start_step=100, end_step=200, factor=3.0, tenants=[tenant],
                                               apps=["web", "video"]))  # fmt: skip
    out.name = f"{scenario.name}+{kind}"
    return out


def _generated(ref: str) -> list[ScenarioConfig]:
    family, _, seeds = ref.partition(":")
    lo, _, hi = seeds.partition("-")
    return [generate_scenario(family, s) for s in range(int(lo), int(hi or lo) + 1)]


def scenarios(args: argparse.Namespace) -> list[ScenarioConfig]:
    """The scenarios the arguments name, in the order given."""
    out: list[ScenarioConfig] = []
    if args.family:
        suite = load_suite(args.suite)
        out += [sc for f in args.family for sc in suite if sc.family == f]
    for name in args.scenario:
        suite_file = suite_dir(args.suite) / f"{name}.yaml"
        out.append(load_scenario(str(suite_file) if suite_file.is_file() else name))
    for ref in args.generate:
        out += _generated(ref)
    if args.handwritten:
        out += [with_event(load_scenario(name), kind) for name in HANDWRITTEN for kind in EVENTS]
    return out


def compare(scenario: ScenarioConfig, policies: Sequence[str], seeds: int, steps: int, seed: int) -> dict[str, float]:
    """SLA violation rate of the scenario's controlled tenants under each policy."""
    return {
        p: evaluate_policy(scenario, make_policy(p), seeds=seeds, steps=steps, seed=seed).sla_violation_rate
        for p in policies
    }


def verdict(rates: dict[str, float]) -> tuple[str, float, str]:
    """(best baseline, its rate, 'beats' / 'ties' / 'loses') of adaptive_heuristic against the baselines."""
    best = min((p for p in rates if p != HEURISTIC), key=lambda p: rates[p])
    h, b = rates[HEURISTIC], rates[best]
    word = "ties" if abs(h - b) < 5e-4 else ("beats" if h < b else "loses")
    return best, b, word


def table(rows: list[tuple[str, dict[str, float]]], policies: Sequence[str]) -> str:
    """Markdown table: one row per scenario and the mean over them."""
    head = ["scenario", *policies, "best baseline", "heuristic"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rates in rows:
        best, _, word = verdict(rates)
        lines.append("| " + " | ".join([name, *(f"{rates[p]:.3f}" for p in policies), best, word]) + " |")
    if rows:
        mean = {p: sum(r[p] for _, r in rows) / len(rows) for p in policies}
        wins = sum(verdict(r)[2] == "beats" for _, r in rows)
        ties = sum(verdict(r)[2] == "ties" for _, r in rows)
        lines.append("| " + " | ".join(["mean", *(f"{mean[p]:.3f}" for p in policies), "",
                                        f"beats {wins}, ties {ties} of {len(rows)}"]) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, evaluate every scenario, print the table (and write JSON when asked)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="heldout", help="suite of --family and --scenario (conf/suite/NAME)")
    p.add_argument("--family", action="append", default=[], help="every scenario of a family in the suite")
    p.add_argument("--scenario", action="append", default=[], help="a suite file's name or a conf/scenario name")
    p.add_argument("--generate", action="append", default=[], metavar="FAMILY:LO-HI",
                   help="scenarios drawn by the generator for seeds LO..HI")  # fmt: skip
    p.add_argument("--handwritten", action="store_true", help="conf/scenario files with each of EVENTS added")
    p.add_argument("--seeds", type=int, default=4, help="environments per evaluation")
    p.add_argument("--steps", type=int, default=300, help="control steps per episode")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", help="also write the rates here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = scenarios(args)
    if not chosen:
        p.error("name scenarios with --family, --scenario, --generate or --handwritten")
    policies = [HEURISTIC, *BASELINES]
    rows = []
    for sc in chosen:
        rows.append((sc.name, compare(sc, policies, args.seeds, args.steps, args.seed)))
        print(f"{sc.name}: " + " ".join(f"{k}={v:.3f}" for k, v in rows[-1][1].items()), file=sys.stderr, flush=True)
    print(table(rows, policies))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({name: rates for name, rates in rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
