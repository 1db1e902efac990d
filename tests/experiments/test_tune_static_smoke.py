"""Tiny-budget run of the tune_static entry point, as a user would start it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from experiments.config import SearchConfig, TuneStaticConfig
from experiments.tune_static import run_tune_static
from shaping.baselines import BASELINES

ROOT = Path(__file__).resolve().parents[2]
TINY = ["search.population=4", "search.generations=1", "search.seeds=1", "search.steps=3", "validation.seeds=2",
        "progress=false"]  # fmt: skip


def test_tune_static_entry_point(tmp_path):
    cmd = [sys.executable, "-m", "experiments.tune_static", "scenario=small_congested", *TINY,
           f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith("small_congested [shop,studio]: tuned_static keeps ") and all(b in line for b in BASELINES)
    assert "on 1 training seeds x 3 steps" in line and "on 2 validation seeds " in line
    (entry,) = (tmp_path / "cache").glob("small_congested-*.json")
    doc = json.loads(entry.read_text())
    assert doc["settings"]["population"] == 4 and set(doc["baselines"]) == set(BASELINES)
    assert doc["validation"]["seeds"] == 2 and set(doc["validation"]["scores"]) == {
        "search",
        *(f"baseline:{b}" for b in BASELINES),
    }
    written = entry.stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "; cached: " in again.stdout and "; tuned: " in proc.stdout
    assert again.stdout.split("; cached")[0] == proc.stdout.split("; tuned")[0]
    assert entry.stat().st_mtime_ns == written  # reused, not tuned again


def test_run_tune_static_on_a_list(tmp_path):
    cfg = TuneStaticConfig(
        scenarios=["small_congested", str(ROOT / "conf/scenario/single_path.yaml")],
        controlled=None,
        search=SearchConfig(population=4, generations=1, seeds=1, steps=2, aqm=[False]),
        cache_dir=str(tmp_path),
        progress=False,
    )
    out = run_tune_static(cfg)
    assert [t.scenario for t in out] == ["small_congested", "single_path"]
    assert all(not t.aqm for t in out) and len(list(tmp_path.glob("*.json"))) == 2
