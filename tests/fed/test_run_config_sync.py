"""pyproject's Flower run config and conf/federated.yaml declare the same federation: one set of defaults."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.config import flat_config
from experiments.federated import FederatedConfig, register
from shaping.fed_settings import RunSettings

ROOT = Path(__file__).resolve().parents[2]
#: Settings that may differ, and why.
EXEMPT = {"init_weights": "the app bundle carries no model file: a deployment names its weights in --run-config"}


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        out |= _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def test_the_flower_run_config_has_the_hydra_defaults():
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        conf = OmegaConf.to_object(compose(config_name="federated"))
    assert isinstance(conf, FederatedConfig)
    hydra = RunSettings.from_config(flat_config(conf))
    flower_table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flower = RunSettings.from_config(_flatten(flower_table))
    differ = {f.name: (getattr(flower, f.name), getattr(hydra, f.name)) for f in dataclasses.fields(RunSettings)
              if getattr(flower, f.name) != getattr(hydra, f.name) and f.name not in EXEMPT}  # fmt: skip
    assert not differ, f"pyproject [tool.flwr.app.config] (first) and conf/federated.yaml (second) differ: {differ}"
