"""Which scenario files a benchmark runs: the suite's, or those listed by name or path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments.benchmark import benchmark_files
from experiments.config import register_configs, to_benchmark_config
from shaping.sim.scenarios import UnknownScenarioError
from shaping.sim.suite import suite_dir

CONF = Path(__file__).resolve().parents[2] / "conf"


def _files(*overrides: str) -> list[str]:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return benchmark_files(to_benchmark_config(compose("benchmark", overrides=list(overrides))))


def test_the_suite_by_default_and_a_scenario_of_it_by_its_name():
    everything = _files()
    assert len(everything) >= 40 and all(Path(f).parent == suite_dir("heldout") for f in everything)
    one = _files("scenarios=[heldout_satellite_degraded_s0,default]")
    suite_file = suite_dir("heldout") / "heldout_satellite_degraded_s0.yaml"
    assert one == [str(suite_file), str(CONF / "scenario" / "default.yaml")]


def test_an_unknown_name_is_one_line_that_says_where_it_was_looked_up():
    with pytest.raises(UnknownScenarioError) as info:
        _files("scenarios=[nope]")
    message = str(info.value)
    assert "nope" in message and "conf/scenario (" in message and "heldout suite" in message and "\n" not in message
