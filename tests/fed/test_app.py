"""The ClientApp's node identity and the run settings both apps read."""

from __future__ import annotations

import json

import pytest

from fed_client.app import tenant_of
from shaping.fed_settings import DEFAULT_TENANTS, RunSettings


def test_partition_id_picks_the_run_configs_tenant():
    s = RunSettings()
    assert tenant_of(s, {"partition-id": 2, "num-partitions": 4}) == (2, DEFAULT_TENANTS[2])
    with pytest.raises(ValueError, match="partition-id 7"):
        tenant_of(s, {"partition-id": 7})


def test_deployment_node_config_names_the_tenant():
    s = RunSettings()
    index, task = tenant_of(s, {"tenant": "gameco", "scenario": "default", "num-envs": 4})
    assert index == 0 and task.name == "gameco@default" and task.num_envs == 4
    index, task = tenant_of(s, {"tenant": "bank", "scenario": "default"})
    assert index == -1 and task.num_envs == 8  # not in the run's table: still a valid tenant node


def test_settings_from_flat_keys_with_defaults_and_strings():
    tenants = [{"scenario": "single_path", "tenant": "devops", "num_envs": 3}]
    s = RunSettings.from_config({"fl.strategy": "fedprox", "fl.rounds": "7", "privacy.target_epsilon": "null",
                                 "tenants": json.dumps(tenants), "train.hidden_sizes": "[16, 16]",
                                 "attack.tenants": "[0]", "unknown.key": 1})  # fmt: skip
    assert s.strategy == "fedprox" and s.rounds == 7 and s.target_epsilon is None
    assert s.tenants[0].name == "devops@single_path" and s.hidden_sizes == (16, 16) and s.attack_tenants == (0,)
    assert RunSettings.from_config({"privacy.target_epsilon": 8.0}).target_epsilon == 8.0
    assert RunSettings.from_config({}).tenants == DEFAULT_TENANTS
