"""Tiny-budget run of the universal pretraining entry point, and its weights as a federation's start."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.federated import register as register_federated
from experiments.pretrain_universal import UniversalPretrainConfig, register
from shaping.agents.global_model import initial_model
from shaping.agents.universal import UniversalLayout

ROOT = Path(__file__).resolve().parents[2]


def test_config_keeps_the_federations_tenants_out_of_pretraining():
    register()
    register_federated()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        conf = OmegaConf.to_object(compose("pretrain_universal"))
        fed = OmegaConf.to_object(compose("federated"))
    assert isinstance(conf, UniversalPretrainConfig)
    trained = {(t.scenario, t.tenant) for t in conf.tenants}
    federated = {(t.scenario, t.tenant) for t in fed.tenants}  # type: ignore[attr-defined]
    assert trained and not trained & federated
    assert {(t.scenario, t.tenant) for t in conf.report_tenants} == federated
    assert conf.train.hidden_sizes == list(fed.train.hidden_sizes)  # type: ignore[attr-defined]


def test_entry_point_writes_weights_a_federation_can_start_from(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "iterations=3", "evaluation.every=2", "train.num_steps=4", "train.update_epochs=1",
        "train.num_minibatches=1", "evaluation.envs=1", "evaluation.steps=3", "progress=false",
        "tenants=[{scenario: default, tenant: bank, num_envs: 2}, {scenario: datacenter, tenant: crm, num_envs: 2}]",
        "report_tenants=[{scenario: small_congested, tenant: studio, num_envs: 2}]",
        "evaluation.baselines=[static_priority,fifo]", "variants.count=2", "variants.num_envs=2",
        "imitation.iterations=2", "evaluation.heldout_variants=1", f"output_dir={out}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.pretrain_universal", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("universal.npz", "last.npz", "pretrain.csv", "pretrain.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "pretrain.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [0, 2, 3]  # the cloned start, then each chunk
    doc = json.loads((out / "summary.json").read_text())
    assert doc["iterations"] == 3 and doc["tenants"] == ["bank@default", "crm@datacenter"]
    assert [v.split("@")[1] for v in doc["variants"]] == ["variant000.yaml", "variant001.yaml"]
    assert {v.split("@")[0] for v in doc["variants"]} <= {"bank", "crm"}  # slots of the listed tenants
    assert len(list((out / "variants").glob("variant*.yaml"))) == 2
    # The held-out variant is selected on, never trained on.
    assert [Path(v.split("@")[1]).name for v in doc["heldout_variants"]] == ["heldout000.yaml"]
    assert any(name.endswith("heldout000.yaml") for name in doc["best"]["tenants"])
    assert doc["imitation"]["baseline"] == "static_priority" and doc["imitation"]["iterations"] == 2
    assert set(doc["report"]["tenants"]["studio@small_congested"]) == {"pretrained", "static_priority", "fifo"}
    assert doc["report"]["vs_best_baseline"]["baseline"] in ("static_priority", "fifo")
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert printed["weights"] == str(out / "universal.npz")
    model = initial_model(UniversalLayout(), (64, 64), weights_file=out / "universal.npz", norm_count=10.0)
    assert float(model.obs_norm.count) == 10.0
