"""A global (universal-layout) model projected onto one tenant computes what the global model computes through
the tenant's mapping: the same logits, values and greedy actions."""

from __future__ import annotations

import json

import pytest
import torch

from shaping.agents.envelope import build_envelope
from shaping.agents.global_model import get_weights, make_model, save_weights
from shaping.agents.projection import load_global_model, project, read_model_card, tenant_model
from shaping.agents.universal import UniversalLayout, tenant_mapping
from shaping.sim.scenarios import load_scenario
from shaping.spec import ActionLayout, ObservationLayout, scenario_specs

#: Tenants of several shapes (classes, entities, paths) that fit the default layout.
TENANTS = [("default", "gameco"), ("edge_gaming", "arena"), ("small_congested", "studio"), ("single_path", "office")]


def _spec(scenario: str, tenant: str):
    return next(s for s in scenario_specs(load_scenario(scenario)) if s.name == tenant)


def _trained_looking(layout: UniversalLayout, hidden=(16, 8)):
    """A global model with non-trivial normalizer statistics and weights (a fresh one is nearly uniform)."""
    torch.manual_seed(3)
    model = make_model(layout, hidden, seed=1)
    with torch.no_grad():
        model.obs_norm.mean.uniform_(-2.0, 2.0)
        model.obs_norm.var.uniform_(0.1, 4.0)
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize(("scenario", "tenant"), TENANTS)
def test_the_projection_computes_what_the_global_model_computes(scenario, tenant):
    spec = _spec(scenario, tenant)
    layout = UniversalLayout()
    glob = _trained_looking(layout)
    mapping = tenant_mapping(spec, layout)
    glob.set_envelope(mapping.envelope)
    own = project(glob, mapping, spec)
    own.set_envelope(build_envelope(spec))
    assert own.obs_dim == ObservationLayout(spec).size and own.nvec == tuple(ActionLayout(spec).nvec)
    obs = torch.randn(64, own.obs_dim) * 3.0 + 1.0
    wide = mapping.observation(obs)
    with torch.no_grad():
        values_g, values_t = glob.get_value(glob.obs_norm(wide)), own.get_value(own.obs_norm(obs))
        logits_g = glob.masked_logits(glob.obs_norm(wide))[:, mapping.act_src.long()]
        logits_t = own.masked_logits(own.obs_norm(obs))
    torch.testing.assert_close(values_t, values_g, rtol=1e-4, atol=1e-4)
    width = logits_t.shape[-1]
    allowed = own._allowed
    torch.testing.assert_close(logits_t[:, allowed], logits_g[..., :width][:, allowed], rtol=1e-4, atol=1e-4)
    assert torch.equal(own.act(obs), mapping.action(glob.act(wide)))


def test_a_weights_file_with_its_card_becomes_the_tenants_model(tmp_path):
    layout = UniversalLayout()
    glob = _trained_looking(layout, hidden=(8,))
    path = save_weights(tmp_path / "round_0003.npz", get_weights(glob))
    (tmp_path / "summary.json").write_text(json.dumps({"layout": layout.to_config(), "hidden_sizes": [8]}))
    assert read_model_card(path) == (layout, (8,))
    loaded, _ = load_global_model(path)
    assert loaded.hidden_sizes == (8,)
    spec = _spec("default", "gameco")
    own = tenant_model(path, spec)
    obs = torch.randn(8, own.obs_dim)
    mapping = tenant_mapping(spec, layout)
    loaded.set_envelope(mapping.envelope)
    own.set_envelope(build_envelope(spec))
    assert torch.equal(own.act(obs), mapping.action(loaded.act(mapping.observation(obs))))
    # Without its card the defaults (64, 64) do not fit: one line naming the file and the sizes.
    (tmp_path / "summary.json").unlink()
    with pytest.raises(ValueError, match=r"round_0003\.npz.*does not fit layout .* hidden sizes \[64, 64\]"):
        tenant_model(path, spec)


def test_a_tenant_that_does_not_fit_the_layout_is_refused():
    spec = _spec("default", "gameco")
    with pytest.raises(ValueError, match="classes"):
        tenant_mapping(spec, UniversalLayout(max_classes=1))
