"""Tiny-budget runs of the hardening benchmarks: many watch streams from one tenant, SIGKILL mid-write, CLI start-up."""

from __future__ import annotations

import json

import pytest

from experiments import bench_crash, bench_hostile


def test_bench_hostile_smoke(capsys):
    assert bench_hostile.main(["--streams", "30", "--tenants", "1", "--calls", "5", "--pause", "0",
                               "--settle", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    for phase in ("baseline", "with_hostile"):
        assert out[phase]["callers"] == 2 and out[phase]["calls"] == 10 and out[phase]["errors"] == 0
        assert 0 < out[phase]["p50_ms"] <= out[phase]["p99_ms"] <= out[phase]["max_ms"]
    hostile = out["with_hostile"]["hostile"]
    assert hostile["attempted"] == 30 and hostile["opened"] + hostile["refused"] == 30
    assert hostile["opened"] == out["max_watches_per_caller"] and not hostile["other_errors"]
    assert "hostile" not in out["baseline"] and set(out["meets_targets"]) == {"others_p99_ms"}


def test_bench_crash_smoke(capsys):
    assert bench_crash.main(["--rounds", "1", "--writers", "2", "--writes", "10", "--kill-min", "0.05",
                             "--kill-max", "0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    (r,) = out["rounds"]
    assert r["round"] == 0 and 0.05 <= r["kill_after_s"] <= 0.1 and r["attempted_max"] == 20
    assert 0 <= r["acknowledged"] <= 20 and r["lost"] == 0 and r["restart_s"] > 0
    assert out["total_acknowledged"] == r["acknowledged"] and out["total_lost"] == 0
    assert out["meets_targets"] == {"lost_acknowledged_writes": True}


@pytest.mark.parametrize("module", [bench_hostile, bench_crash])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0 and "--quick" in capsys.readouterr().out


def test_bench_cli_smoke(capsys):
    from experiments import bench_cli

    assert bench_cli.main(["--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    for command in ("help", "read"):
        assert 0 < out[command]["min_s"] <= out[command]["median_s"] <= out[command]["max_s"]
    assert out["repeats"] == 1 and out["target_s"] == 0.5 and isinstance(out["met"], bool)
