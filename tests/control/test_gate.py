"""The safety gate on the tenant's simulator twin: a sound model passes, a harmful one does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from shaping.agents.global_model import get_weights, save_weights
from shaping.agents.projection import load_global_model
from shaping.baselines import get_baseline
from shaping.control.gate import GateConfig, SafetyGate
from shaping.control.policy import ModelPolicy, ScriptedPolicy, StaticPolicy
from shaping.spec import ACTION_FIELDS, tenant_spec
from tests.control.conftest import small_scenario

#: The committed pretrained universal model (its summary.json beside it).
PRETRAINED = Path(__file__).resolve().parents[2] / "conf" / "models" / "universal.npz"


def harmful_weights(directory: Path) -> Path:
    """The pretrained model with its actor's last bias pushing every class to the smallest rate and ceil, the
    largest drop probability and the second path, and the root to its smallest rate: the envelope still
    lets through a plan that starves the tenant's SLA classes."""
    model, layout = load_global_model(PRETRAINED)
    last = [m for m in model.actor if isinstance(m, torch.nn.Linear)][-1]
    offsets = [0]
    for n in layout.nvec:
        offsets.append(offsets[-1] + n)
    pick = {"rate": 0, "ceil": 0, "drop": layout.per_class[ACTION_FIELDS.index("drop")] - 1, "path": 1}
    with torch.no_grad():
        for c in range(layout.max_classes):
            for f, name in enumerate(ACTION_FIELDS):
                if name in pick:
                    last.bias[offsets[c * len(ACTION_FIELDS) + f] + pick[name]] += 100.0
        last.bias[offsets[-2]] += 100.0  # root: its smallest level
    shutil.copy(PRETRAINED.parent / "summary.json", directory / "summary.json")
    return save_weights(directory / "harmful.npz", get_weights(model))


@pytest.fixture(scope="module")
def gate_and_rules():
    scenario = small_scenario()
    spec = tenant_spec(scenario, "acme")
    rules = StaticPolicy(spec, get_baseline("static_priority").plan(spec), name="rules")
    # Two seeds x 40 intervals: enough for the harmful model's gap (about a third of SLA class-intervals).
    return SafetyGate(scenario, "acme", rules.plan, GateConfig(margin=0.02, seeds=2, steps=40)), rules, spec


def test_a_sound_model_is_accepted_and_a_harmful_one_rejected(gate_and_rules, tmp_path):
    gate, rules, spec = gate_and_rules
    good = ModelPolicy.from_checkpoint(PRETRAINED, spec)
    verdict = gate.check(good, rules)
    assert verdict.accepted and verdict.reason == "ok", verdict
    assert verdict.candidate is not None and verdict.rules is not None and verdict.in_force == verdict.rules
    bad = ModelPolicy.from_checkpoint(harmful_weights(tmp_path), spec)
    verdict = gate.check(bad, good)
    assert not verdict.accepted and verdict.reason == "worse_than_policy", verdict
    assert verdict.candidate is not None and verdict.in_force is not None
    assert verdict.candidate > verdict.in_force + 0.1
    # Against a policy in force that is itself bad, the static rules still stop it.
    verdict = gate.check(bad, bad)
    assert not verdict.accepted and verdict.reason == "worse_than_rules", verdict


def test_a_policy_the_twin_cannot_run_is_rejected_not_raised(gate_and_rules):
    gate, rules, spec = gate_and_rules
    scripted = ScriptedPolicy(spec, lambda observed: rules.plan, name="scripted")
    verdict = gate.check(scripted, rules)
    assert not verdict.accepted and verdict.reason == "eval_error" and "cannot run" in verdict.detail
    with pytest.raises(ValueError, match="gate needs margin >= 0"):
        GateConfig(margin=-0.1)
