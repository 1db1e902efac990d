"""Tiny-budget runs of the benchmark: the entry point with worker processes, results.json's structure and
summary arithmetic, and policies that cannot run on a scenario."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from experiments.benchmark import run_benchmark
from experiments.config import BenchmarkConfig, OutputConfig
from experiments.yardstick import best_member
from shaping.policies import POLICY_KINDS, PolicyInput, StaticPolicy, baseline_policy
from shaping.spec import PlanBatch

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "applicable", "policy", "controlled", "sla_violation_rate", "neighbour_sla_violation_rate", "utilization",
    "mean_reward", "apps", "reference", "ratio",
}  # fmt: skip


def _finite(doc: object) -> bool:
    if isinstance(doc, dict):
        return all(_finite(v) for v in doc.values())
    if isinstance(doc, list):
        return all(_finite(v) for v in doc)
    return not isinstance(doc, float) or math.isfinite(doc)


def test_benchmark_entry_point(tmp_path):
    out = tmp_path / "run"
    yard = ["fifo", "static_priority", "fq_codel"]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "scenarios=[small_congested,single_path]",
         f"yardstick=[{','.join(yard)}]", "static=[fifo,static_priority]", "policies=[greedy_premium]",
         "steps=4", "seeds=2", "workers=2", "progress=false", f"hydra.run.dir={out}"],
        cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.md", "results.json", "ratios.png", "sla_utilization.png", "event_groups.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "`greedy_premium` does not beat the yardstick: geometric-mean ratio" in proc.stdout
    # fq_codel is a yardstick member outside `static`: the verdict judges it against the best static plan.
    assert re.search(r"`fq_codel` (beats|does not beat) the best static plan: geometric-mean ratio", proc.stdout)

    doc = json.loads((out / "results.json").read_text())
    assert _finite(doc)
    s = doc["settings"]
    assert (s["seeds"], s["steps"], s["seed"], s["workers"], s["torch_threads"]) == (2, 4, 0, 2, 1)
    assert s["suite"] is None and s["policies"] == ["greedy_premium"] and s["yardstick"] == yard
    assert s["machine_torch_threads"] >= 1 and s["wall_s"] > 0 and s["timing"]["load_s"] > 0
    assert list(doc["scenarios"]) == ["small_congested", "single_path"]
    refs = ["greedy_premium", *yard]
    for name, sc in doc["scenarios"].items():
        assert sc["family"] == "hand-written" and "diurnal" in sc["events"] and sc["steps"] == 4
        assert sc["controlled"] == sc["tenants"]  # hand-written scenarios control every tenant
        assert list(sc["results"]) == refs
        for row in sc["results"].values():
            assert ROW_KEYS <= set(row) and row["controlled"] == sc["controlled"]
            assert 0.0 <= row["sla_violation_rate"] <= 1.0 and 0.0 <= row["neighbour_sla_violation_rate"] <= 1.0
            assert {"p50_ms", "p99_ms"} <= set(next(iter(row["apps"].values())))
        assert sc["best_yardstick"] == best_member(sc["results"], yard), name

    # The summary, recomputed from the rows: greedy_premium against the best of the three members.
    ratios = []
    for sc in doc["scenarios"].values():
        best = min(sc["results"][m]["sla_violation_rate"] for m in yard)
        ratios.append((sc["results"]["greedy_premium"]["sla_violation_rate"] + 0.005) / (best + 0.005))
    c = doc["summary"]["greedy_premium"]["vs_yardstick"]["all"]
    assert c["geomean_ratio"] == pytest.approx(math.prod(ratios) ** 0.5)
    assert c["worst_ratio"] == pytest.approx(max(ratios)) and c["won"] + c["tied"] + c["lost"] == 2
    assert doc["summary"]["greedy_premium"]["applicable"] == 2
    assert set(doc["summary"]) == set(refs)
    # The yardstick's own checks: fq_codel is its adaptive member here, but neither scenario has a failure;
    # no static member is a searched plan.
    sanity = doc["sanity"]
    assert [a["policy"] for a in sanity["adaptive"]] == ["fq_codel"] and sanity["tuned"] == []
    assert sanity["adaptive"][0]["comparison"]["scenarios"] == 0 and sanity["adaptive"][0]["holds"] is False
    assert "## Is the yardstick sound?" in proc.stdout and "no scenario with a failure" in proc.stdout


@dataclass
class _Narrow:
    """A baseline that claims it can drive studio only (as a checkpoint trained for studio does)."""

    inner: StaticPolicy
    name: str = "narrow"
    aqm: bool = False
    tenants: tuple[str, ...] = ("studio",)

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        return self.inner(inp)


@dataclass
class _Refusing:
    """A policy that raises ValueError on any scenario (as a checkpoint does on a tenant of another spec)."""

    name: str = "refusing"
    aqm: bool = False

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        raise ValueError("tenant studio has another spec")


def _shop_only(tmp_path: Path) -> str:
    """small_congested with only shop controlled, as a scenario file of another name."""
    data = yaml.safe_load((ROOT / "conf" / "scenario" / "small_congested.yaml").read_text())
    data.update(name="shop_only", controlled=["shop"])
    path = tmp_path / "shop_only.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_not_applicable_policies_are_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setitem(POLICY_KINDS, "narrow", lambda arg: _Narrow(baseline_policy(arg)))  # type: ignore[arg-type]
    monkeypatch.setitem(POLICY_KINDS, "refusing", lambda arg: _Refusing())
    cfg = BenchmarkConfig(
        policies=["narrow:fifo", "refusing:x"], yardstick=["fifo", "static_priority"], static=["fifo"],
        scenarios=["small_congested", _shop_only(tmp_path)], seeds=1, steps=3, workers=1, progress=False,
        output=OutputConfig(plots=False, print_table=False),
    )  # fmt: skip
    doc = run_benchmark(cfg, tmp_path / "out")
    both, shop = doc["scenarios"]["small_congested"], doc["scenarios"]["shop_only"]
    # small_congested names no controlled tenants: every row drives the one tenant every policy can (studio),
    # as experiments.compare does; shop_only names shop, which narrow cannot drive.
    assert both["controlled"] == ["studio"] and shop["controlled"] == ["shop"]
    assert all(r["controlled"] == ["studio"] for r in both["results"].values() if r["applicable"])
    na = shop["results"]["narrow:fifo"]
    assert na["applicable"] is False and "controls only ['studio']" in na["reason"]
    assert shop["results"]["fifo"]["applicable"] and shop["results"]["fifo"]["controlled"] == ["shop"]
    # narrow:fifo is fifo where it runs: the same numbers (same seeds, same tenants, same neighbours).
    assert both["results"]["narrow:fifo"]["sla_violation_rate"] == both["results"]["fifo"]["sla_violation_rate"]
    for sc in (both, shop):
        assert sc["results"]["refusing:x"] == {"applicable": False, "reason": "tenant studio has another spec"}
    summary = doc["summary"]
    narrow, refusing = summary["narrow:fifo"], summary["refusing:x"]
    assert narrow["applicable"] == 1 and narrow["vs_yardstick"]["all"]["scenarios"] == 1
    assert refusing["applicable"] == 0 and refusing["vs_yardstick"]["all"]["geomean_ratio"] is None
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Not applicable on 1 of 2 scenarios" in md and "n/a" in md
    assert "`refusing:x` has no scenario to compare" in md
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"] == summary and saved["scenarios"]["shop_only"]["results"]["narrow:fifo"] == na


def test_unknown_policy_fails_before_any_evaluation(tmp_path):
    cfg = BenchmarkConfig(
        yardstick=["fifo", "no_such_baseline"], static=["fifo"], scenarios=["small_congested"], seeds=1, steps=2,
        workers=1, progress=False, output=OutputConfig(plots=False, print_table=False),
    )  # fmt: skip
    with pytest.raises(KeyError, match="no_such_baseline"):
        run_benchmark(cfg, tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_scenario"):
        run_benchmark(BenchmarkConfig(yardstick=["fifo"], static=[], scenarios=["no_such_scenario"]), tmp_path)
