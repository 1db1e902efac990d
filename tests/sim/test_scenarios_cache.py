"""load_scenario parses a file once per content and hands every caller its own copy."""

from __future__ import annotations

from pathlib import Path

from shaping.sim.scenarios import load_scenario

DEFAULT = Path(__file__).resolve().parents[2] / "conf" / "scenario" / "default.yaml"


def test_each_call_gets_its_own_copy():
    a, b = load_scenario("default"), load_scenario("default")
    assert a == b and a is not b and a.tenants[0] is not b.tenants[0]
    a.tenants[0].name = "changed"
    assert load_scenario("default").tenants[0].name == b.tenants[0].name != "changed"


def test_a_file_that_changes_is_read_again(tmp_path):
    path = tmp_path / "s.yaml"
    text = DEFAULT.read_text()
    path.write_text(text)
    first = load_scenario(str(path))
    path.write_text(text.replace(f"name: {first.name}", "name: renamed", 1))
    assert load_scenario(str(path)).name == "renamed" != first.name
