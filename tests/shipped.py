"""The shipped scenarios (conf/scenario/NAME.yaml), parsed once per test session.

Each load_scenario validates its YAML through OmegaConf (a third of a second, more on a busy host) and
most tests only read the result; the tests of loading itself (tests/config) still call load_scenario.
"""

from __future__ import annotations

import copy
import functools

from shaping.config import ScenarioConfig
from shaping.sim.scenarios import load_scenario


@functools.cache
def _parsed(name: str) -> ScenarioConfig:
    return load_scenario(name)


def shipped_scenario(name: str = "default") -> ScenarioConfig:
    """A fresh copy of the shipped scenario NAME (tests may change it without touching another's)."""
    return copy.deepcopy(_parsed(name))
