"""Training from the control loop's experience store (a small synthetic store written with its own API)."""

from __future__ import annotations

import math

import pytest
import torch

from fed_client.experience import open_store, train_on_experience, universal_actions
from shaping.agents.global_model import make_model
from shaping.agents.universal import UniversalLayout, tenant_mapping
from shaping.agents.envelope import build_envelope, random_actions
from shaping.config import PPOConfig
from shaping.control.experience import MODE_FALLBACK, MODE_POLICY, ExperienceStore, Transition
from shaping.sim.scenarios import load_scenario
from shaping.spec import ActionLayout, ObservationLayout
from shaping.spec.tenant import scenario_specs


def _write_store(root, spec, n=48):
    store = ExperienceStore(root, spec, segment_size=16)
    nvec = torch.as_tensor(ActionLayout(spec).nvec)
    g = torch.Generator().manual_seed(0)
    # Policy steps pick allowed choices; fallback steps (every 5th) any choice, possibly outside the envelope.
    allowed = random_actions(build_envelope(spec), n, generator=g)
    for t in range(n):
        action = (torch.rand(len(nvec), generator=g) * nvec).long() if t % 5 == 0 else allowed[t]
        store.append(Transition(
            obs=torch.rand(ObservationLayout(spec).size, generator=g), action=action,
            logprob=math.nan if t % 5 == 0 else -3.0, reward=float(t % 3) - 1.0,
            next_obs=torch.rand(ObservationLayout(spec).size, generator=g), done=t == n - 1,
            mode=MODE_FALLBACK if t % 5 == 0 else MODE_POLICY, time=0.1 * t,
        ))  # fmt: skip
    store.close()


def test_training_on_recorded_experience_updates_the_policy(tmp_path):
    spec = scenario_specs(load_scenario("small_congested"))[1]
    _write_store(tmp_path / "exp", spec)
    layout = UniversalLayout()
    mapping = tenant_mapping(spec, layout)
    model = make_model(layout, (8,))
    before = [p.clone() for p in model.parameters()]
    store = open_store(str(tmp_path / "exp"), spec)
    res = train_on_experience(model, store, mapping, PPOConfig(update_epochs=1, num_minibatches=2))
    assert res.num_examples == 48 and res.optimizer_steps > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_store_of_another_tenant_is_refused(tmp_path):
    specs = scenario_specs(load_scenario("small_congested"))
    _write_store(tmp_path / "exp", specs[0], n=4)
    with pytest.raises(ValueError, match="another spec"):
        open_store(str(tmp_path / "exp"), specs[1])


def test_universal_actions_put_each_class_in_its_slot():
    spec = scenario_specs(load_scenario("small_congested"))[1]
    mapping = tenant_mapping(spec, UniversalLayout())
    own = torch.arange(len(ActionLayout(spec).nvec)).unsqueeze(0) % 2
    assert torch.equal(mapping.action(universal_actions(mapping, own)), own)


def test_dp_sgd_on_recorded_experience_is_charged_to_the_tenants_accountant(tmp_path):
    from fed_client.dpsgd import DPSGD

    spec = scenario_specs(load_scenario("small_congested"))[1]
    _write_store(tmp_path / "exp", spec)
    layout = UniversalLayout()
    model = make_model(layout, (8,))
    before = [p.clone() for p in model.parameters()]
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    store = open_store(str(tmp_path / "exp"), spec)
    res = train_on_experience(model, store, tenant_mapping(spec, layout), PPOConfig(update_epochs=1, num_minibatches=2),
                              dp=dp)  # fmt: skip
    # One epoch of two minibatches: two DP-SGD steps at sampling rate 1/2, reported and charged.
    assert res.optimizer_steps == 2
    assert sum(steps for _, _, steps in dp.accountant.history) == 2
    assert 0 < dp.epsilon() < float("inf")
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())  # hooks removed
