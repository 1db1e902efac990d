"""The tenants and scenarios the docs' federation examples name exist, so the examples run as written.

Node configs (`--node-config 'tenant=... scenario=...'`), run configs (`tenants='[...]'`) and
`deploy_local --tenant TENANT@SCENARIO`; upper-case names (NAME) are placeholders.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from shaping.sim.scenarios import load_scenario
from shaping.spec.tenant import tenant_spec

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _node_configs() -> list[tuple[str, dict[str, str]]]:
    """(file, node config) of every `--node-config '...'` in the docs that names a tenant (not a placeholder)."""
    found = []
    for doc in DOCS:
        for quoted in re.findall(r"--node-config ('[^']*'|\"[^\"]*\")", doc.read_text()):
            pairs = dict(item.partition("=")[::2] for item in shlex.split(quoted[1:-1]) if "=" in item)
            if "tenant" in pairs and not pairs["tenant"].isupper():  # tenant="NAME" is a placeholder
                found.append((doc.name, pairs))
    return found


def _run_config_tenants() -> list[tuple[str, dict[str, str]]]:
    """(file, entry) of every `tenants=[...]` JSON list in the docs."""
    found = []
    for doc in DOCS:
        for listed in re.findall(r"tenants='?(\[\{.*?\}\])", doc.read_text()):
            found += [(doc.name, entry) for entry in json.loads(listed)]
    return found


def _deploy_local_tenants() -> list[tuple[str, dict[str, str]]]:
    """(file, entry) of every `deploy_local --tenant TENANT@SCENARIO` in the docs."""
    found = []
    for doc in DOCS:
        for tenant, scenario in re.findall(r"--tenant ([\w-]+)@([\w-]+)", doc.read_text()):
            if not tenant.isupper():
                found.append((doc.name, {"tenant": tenant, "scenario": scenario}))
    return found


EXAMPLES = _node_configs() + _run_config_tenants() + _deploy_local_tenants()


def test_the_docs_have_federation_examples():
    assert len(_node_configs()) >= 2 and _run_config_tenants() and _deploy_local_tenants()


@pytest.mark.parametrize(("doc", "example"), EXAMPLES, ids=[f"{d}:{e['tenant']}" for d, e in EXAMPLES])
def test_each_examples_tenant_is_a_tenant_of_its_scenario(doc, example):
    # fed_client.app.tenant_of: a node config without a scenario means "default".
    tenant_spec(load_scenario(example.get("scenario", "default")), example["tenant"])
