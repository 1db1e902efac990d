"""The federation benchmark: its tenant mix, and a tiny run of the entry point (SecAgg+ and plain)."""

from __future__ import annotations

import json

import pytest

from experiments.bench_fl import bench_config, main, tenant_cycle


def test_tenant_cycle_covers_every_scenario_tenant_then_repeats():
    ts = tenant_cycle(25, 2)
    assert len(ts) == 25 and len({(t["scenario"], t["tenant"]) for t in ts}) == 19
    assert ts[19] == ts[0] and all(t["num_envs"] == 2 for t in ts)


def test_bench_config_switches_secagg_only(tmp_path):
    plain, secure = bench_config(4, 2, False, tmp_path), bench_config(4, 2, True, tmp_path)
    assert "privacy.secure_aggregation" not in plain and secure["privacy.secure_aggregation"] is True
    assert len(json.loads(plain["tenants"])) == 4 and plain["fl.min_fit_clients"] == 4


@pytest.mark.slow
def test_bench_smoke(capsys):
    out = main(["--small", "3", "--rounds", "2", "--large", "0"])
    assert out["fedavg"]["rounds"] == 2 and out["secaggplus"]["rounds"] == 2
    assert out["secagg_over_fedavg"] > 0
    assert json.loads(capsys.readouterr().out)["secaggplus"]["secagg"] is True
