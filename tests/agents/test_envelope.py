"""Safety envelope: its rules on the default scenario, and no sampled or greedy action outside it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shaping.agents import ActorCritic, Envelope, EnvelopeConfig, build_envelope, mask_logits, random_actions
from shaping.sim.scenarios import load_scenario
from shaping.spec import ACTION_FIELDS, ActionLayout, ObservationLayout, QoSRequirement, TenantSpec, scenario_specs

F = len(ACTION_FIELDS)
RATE, CEIL, DROP = ACTION_FIELDS.index("rate"), ACTION_FIELDS.index("ceil"), ACTION_FIELDS.index("drop")


@pytest.fixture(scope="module")
def specs() -> list[TenantSpec]:
    return scenario_specs(load_scenario("default"))


def _allowed_levels(spec: TenantSpec, env: Envelope, cls: str, field: int) -> list[float]:
    c = [tc.name for tc in spec.classes].index(cls)
    levels = {RATE: spec.rate_levels, CEIL: spec.ceil_levels, DROP: spec.drop_levels}[field]
    return [v for v, ok in zip(levels, env.masks[c * F + field], strict=True) if ok]


def test_rules_on_the_default_scenario(specs):
    gameco = next(s for s in specs if s.name == "gameco")
    env = build_envelope(gameco)
    assert env.nvec == tuple(ActionLayout(gameco).nvec) and not env.relaxed
    # backup: min 10 of a 100 Mbit/s cap -> rate levels >= 0.1; SLA class -> no drop.
    assert _allowed_levels(gameco, env, "backup", RATE) == [0.1, 0.2, 0.35, 0.5, 0.75, 1.0]
    assert _allowed_levels(gameco, env, "backup", DROP) == [0.0]
    assert _allowed_levels(gameco, env, "game", DROP) == [0.0]
    assert _allowed_levels(gameco, env, "game", CEIL) == list(gameco.ceil_levels)  # decoding keeps ceil >= rate
    streamer = next(s for s in specs if s.name == "streamer")
    # sync has no SLA: drop up to the default max_drop_prob 0.1.
    assert _allowed_levels(streamer, build_envelope(streamer), "sync", DROP) == [0.0, 0.01, 0.05, 0.1]


def test_config_bounds_and_root(specs):
    gameco = next(s for s in specs if s.name == "gameco")
    cfg = EnvelopeConfig(max_drop_prob=0.05, min_rate_share=0.05, max_rate_share=0.5, sla_rate_margin=2.0)
    env = build_envelope(gameco, cfg)
    assert _allowed_levels(gameco, env, "web", RATE) == [0.05, 0.1, 0.2, 0.35, 0.5]
    assert _allowed_levels(gameco, env, "backup", RATE) == [0.2, 0.35, 0.5]  # 2 x 10 Mbit/s
    assert _allowed_levels(gameco, env, "video", DROP) == [0.0]  # app_floor is an SLA: no drop
    # root at least the SLA minimums (2 x 10 Mbit/s) and min_root_share
    root = build_envelope(gameco, EnvelopeConfig(sla_rate_margin=4.0, min_root_share=0.0)).masks[-1]
    assert [v for v, ok in zip(gameco.root_levels, root, strict=True) if ok] == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_an_unsatisfiable_bound_keeps_the_nearest_level_and_says_so(specs):
    spec = specs[0]
    classes = list(spec.classes)
    classes[0] = dataclasses.replace(classes[0], qos=QoSRequirement(min_mbps=10 * spec.cap_mbps))
    env = build_envelope(dataclasses.replace(spec, classes=tuple(classes)))
    assert env.masks[RATE] == tuple(v == 1.0 for v in spec.rate_levels)
    assert any(classes[0].name in r and "rate" in r for r in env.relaxed)
    assert any(r.startswith("root") for r in env.relaxed)
    with pytest.raises(ValueError, match="no choice"):
        Envelope(((True, False), (False, False)))
    with pytest.raises(ValueError):
        EnvelopeConfig(min_rate_share=0.6, max_rate_share=0.5)


def test_contains_checks_range_and_masks():
    env = Envelope(((True, False, True), (False, True)))
    acts = torch.tensor([[0, 1], [2, 1], [1, 1], [0, 0], [3, 1], [-1, 1]])
    assert env.contains(acts).tolist() == [True, True, False, False, False, False]
    logits = mask_logits(torch.zeros(2, 3), env.padded()[:, :3])
    assert torch.isinf(logits).tolist() == [[False, True, False], [True, False, True]]


@pytest.mark.parametrize("tenant", [0, 1, 2, 3])
def test_sampling_never_leaves_the_envelope(specs, tenant):
    torch.manual_seed(tenant)
    spec = specs[tenant]
    envelope = build_envelope(spec)
    agent = ActorCritic(ObservationLayout(spec).size, ActionLayout(spec).nvec, hidden_sizes=(16,), envelope=envelope)
    last = agent.actor[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        # Push the policy hard towards the forbidden choices: masking must still hold.
        last.bias.copy_(torch.where(envelope.flat(), -20.0, 20.0))
    obs = torch.randn(4096, agent.obs_dim) * 3
    sampled = agent.act(obs, deterministic=False)
    greedy = agent.act(obs, deterministic=True)
    scored, _, _, _ = agent.get_action_and_value(agent.obs_norm(obs))
    uniform = random_actions(envelope, 4096)
    for actions in (sampled, greedy, scored, uniform):
        assert bool(envelope.contains(actions).all())
    # Uniform exploration reaches every allowed choice of every dimension.
    for d, mask in enumerate(envelope.masks):
        assert set(uniform[:, d].tolist()) == {i for i, ok in enumerate(mask) if ok}


def test_set_envelope_checks_the_layout():
    agent = ActorCritic(3, (2, 3), hidden_sizes=(4,))
    with pytest.raises(ValueError, match="action sizes"):
        agent.set_envelope(Envelope.allow_all((3, 3)))
    agent.set_envelope(Envelope(((True, False), (False, False, True))))
    assert agent.act(torch.randn(50, 3), deterministic=False).unique(dim=0).tolist() == [[0, 2]]
    agent.set_envelope(None)
    assert "_allowed" not in agent.state_dict()
