"""DESIGN.md's import table: each Flower app imports only shaping, flwr, opacus (and itself), never the other app."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Besides the table's packages: the standard library and the numeric stack shaping is built on.
ALLOWED = {"shaping", "flwr", "opacus", "numpy", "torch"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("app", ["fed_client", "fed_server"])
def test_app_imports_only_shaping_flwr_opacus(app):
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted((ROOT / app).glob("*.py")):
        bad = _imports(path) - stdlib - ALLOWED - {app}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
