"""Load scenarios from `conf/scenario/*.yaml` into typed ScenarioConfig objects (no Hydra needed).

The YAML files are the one source of scenarios; Hydra composes the same files in experiments/,
and this loader lets the Gymnasium and PettingZoo environments use them without Hydra.
OmegaConf (Hydra's config library) validates the YAML against the dataclass schema.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from shaping.config import ScenarioConfig

class ScenarioFileError(ValueError):
    """A scenario file that is not YAML, or whose content does not fit the ScenarioConfig schema."""


class UnknownScenarioError(FileNotFoundError):
    """No scenario of that name in conf/scenario, and no such file."""


#: Environment variable naming a conf/ directory to use instead of the repository's.
CONF_ENV = "FEDSHAPE_CONF"


def default_conf_dir() -> Path:
    """The conf/ directory FedShape ships: the package data of an installed FedShape (shaping/conf, which
    setup.py maps from the repository's conf/), else the repository's conf/ beside the sources."""
    here = Path(__file__).resolve()
    # The package data first: a wheel's shaping/ sits in site-packages, whose parent holds no conf/; a
    # checkout has no shaping/conf, so there the repository's conf/ is used (the one copy in git).
    installed, checkout = here.parents[1] / "conf", here.parents[2] / "conf"
    return installed if (installed / "scenario").is_dir() else checkout


def conf_dir() -> Path:
    """The conf/ directory: $FEDSHAPE_CONF, else default_conf_dir()."""
    env = os.environ.get(CONF_ENV)
    path = Path(env) if env else default_conf_dir()
    if not (path / "scenario").is_dir():
        raise FileNotFoundError(
            f"no scenario directory under {path}; set {CONF_ENV} to the repository's conf/ directory"
        )
    return path


def available_scenarios() -> list[str]:
    """Names of the scenarios in conf/scenario."""
    return sorted(p.stem for p in (conf_dir() / "scenario").glob("*.yaml"))


def scenario_from_dict(data: dict[str, Any]) -> ScenarioConfig:
    """Validate a plain dict (YAML content or Hydra node) against the schema."""
    merged = OmegaConf.merge(OmegaConf.structured(ScenarioConfig), data)
    return cast(ScenarioConfig, OmegaConf.to_object(merged))


def load_scenario(name: str = "default") -> ScenarioConfig:
    """Load a scenario by name (conf/scenario/NAME.yaml) or by path to a YAML file.

    Raises:
        UnknownScenarioError: no such scenario or file (a FileNotFoundError).
        ScenarioFileError: the file is not YAML or does not fit the schema (a one-line message).
    """
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = conf_dir() / "scenario" / f"{name}.yaml"
    if not path.is_file():
        raise UnknownScenarioError(f"unknown scenario {name!r}; available: {available_scenarios()}")
    text = path.read_text()
    # Validating against the schema costs 0.2-0.4 s a file and the same files are read again and again
    # (every environment, evaluation and tuned plan of a scenario); a copy keeps callers apart.
    return copy.deepcopy(_parse(str(path), text))


@functools.lru_cache(maxsize=256)
def _parse(path: str, text: str) -> ScenarioConfig:
    """The file's text validated against the schema (cached by path and content; errors are not cached)."""
    try:
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
        return scenario_from_dict(cast(dict[str, Any], data))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ScenarioFileError(f"scenario file {path} is not valid YAML: {problem}{where}") from None
    except OmegaConfBaseException as err:
        # OmegaConf's messages run over several lines (full_key, object_type): keep the first and the key.
        key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ScenarioFileError(f"scenario file {path}: {first}" + (f" (key {key})" if key else "")) from None
