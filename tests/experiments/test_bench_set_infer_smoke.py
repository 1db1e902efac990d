"""Tiny-budget run of the set policy's inference benchmark: both paths of every layout in one JSON document."""

from __future__ import annotations

import json

import pytest

from experiments.bench_set_infer import main


def test_bench_set_infer_prints_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--layouts", "3x2", "1x1", "--runs", "2", "--n", "20"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["layouts"]) == {"3x2", "1x1"} and doc["runs"] == 2
    for by_path in doc["layouts"].values():
        for stats in by_path.values():
            assert 0 < stats["p50_us"] <= stats["p99_us"] and 0 < stats["cpu_p50_us"] <= stats["cpu_p99_us"]
            assert len(stats["runs_p50_us"]) == 2
    assert len(doc["load_average_before"]) == 3 and len(doc["load_average_after"]) == 3
