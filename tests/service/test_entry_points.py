"""Tiny-budget runs of the service's entry points: the API benchmark, the fuzzing script, the stub generator."""

from __future__ import annotations

import json

from experiments import bench_api, fuzz_api
from shaping.service import gen_protos


def test_bench_api_smoke(capsys):
    assert bench_api.main(["--clients", "4", "--seconds", "0.3", "--warmup", "0.1", "--repeats", "1",
                           "--tenants", "2", "--reconcile", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    for phase in ("reads", "writes", "reads_at_target", "writes_at_target"):
        assert out[phase]["requests_per_s"] > 0 and out[phase]["errors"] == 0
    assert set(out["meets_targets"]) == {"reads_per_s", "writes_per_s", "p99_ms_at_target_rates"}
    assert out["reconcile"]["changes"] == 3 and out["reconcile"]["max_ms"] < 5000


def test_fuzz_api_smoke(capsys):
    assert fuzz_api.main(["--requests", "60", "--batch", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 60 and not out["failures"] and out["agent_revisions_ok"]


def test_gen_protos_check_smoke():
    assert gen_protos.main(["--check"]) == 0
