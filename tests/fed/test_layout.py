"""The universal layout: every scenario's tenants fit, observations and actions land in the right slots."""

from __future__ import annotations

import pytest
import torch

from shaping.agents.universal import PaddedEnv, UniversalLayout, class_slots, tenant_mapping
from shaping.config import APPS
from shaping.sim.scenarios import load_scenario
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.spec import ObservationLayout
from shaping.spec.tenant import scenario_specs

SCENARIOS = ("default", "datacenter", "edge_gaming", "small_congested", "single_path")


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_tenant_fits_the_default_layout(name):
    layout = UniversalLayout()
    for spec in scenario_specs(load_scenario(name)):
        m = tenant_mapping(spec, layout)
        assert len(m.envelope.masks) == len(layout.nvec)
        assert m.envelope.nvec == layout.nvec
        assert len(m.act_src) == 6 * len(spec.classes) + 1


def test_observation_values_land_in_their_slots():
    spec = scenario_specs(load_scenario("default"))[0]  # gameco: gaming, web, video, bulk
    layout = UniversalLayout()
    m = tenant_mapping(spec, layout)
    names = ObservationLayout(spec).names
    obs = torch.arange(1, len(names) + 1, dtype=torch.float32).unsqueeze(0)
    out = m.observation(obs)[0]
    slots = class_slots(spec)
    # class_rtt block starts after 2 * max_entities entity values; class c goes to its slot.
    rtt0 = 2 * layout.max_entities
    for c in range(len(spec.classes)):
        own = names.index(f"class_rtt[{spec.classes[c].name}]")
        assert out[rtt0 + slots[c]] == obs[0, own]
    # The static block: one-hot of each class's application and a present flag.
    static0 = 2 * layout.max_entities + 4 * layout.max_classes + 2 * layout.max_vms
    for c, tc in enumerate(spec.classes):
        base = static0 + slots[c] * (len(APPS) + 1)
        assert out[base + APPS.index(tc.app)] == 1 and out[base + len(APPS)] == 1
    assert out.shape == (layout.obs_dim,)


def test_slots_follow_application_order():
    spec = scenario_specs(load_scenario("default"))[0]
    apps = [spec.classes[c].app for c in sorted(range(len(spec.classes)), key=lambda c: class_slots(spec)[c])]
    assert apps == sorted(apps, key=APPS.index)


def test_actions_map_back_and_padding_is_forbidden():
    spec = scenario_specs(load_scenario("small_congested"))[0]  # 3 classes, 2 paths
    layout = UniversalLayout()
    m = tenant_mapping(spec, layout)
    universal = torch.arange(len(layout.nvec)).unsqueeze(0)
    own = m.action(universal)[0]
    slots = class_slots(spec)
    assert own[0].item() == slots[0] * 6 and own[-1].item() == len(layout.nvec) - 1
    masks = m.envelope.masks
    empty_slot = 3  # the fourth slot is unused by a 3-class tenant: only choice 0
    assert all(masks[empty_slot * 6 + f] == (True,) + (False,) * (layout.per_class[f] - 1) for f in range(6))
    assert masks[slots[0] * 6 + 5][2] is False  # a third path does not exist


def test_a_tenant_larger_than_the_layout_is_refused():
    spec = scenario_specs(load_scenario("default"))[0]
    with pytest.raises(ValueError, match="layout holds"):
        tenant_mapping(spec, UniversalLayout(max_classes=2))


def test_padded_env_steps_with_universal_actions():
    env = PaddedEnv(ShapingVectorEnv(2, "single_path", tenant="office"), UniversalLayout())
    obs = env.reset_torch(seed=0)
    assert obs.shape == (2, UniversalLayout().obs_dim)
    res = env.step_torch(torch.zeros(2, len(UniversalLayout().nvec), dtype=torch.long))
    assert res.obs.shape == obs.shape and res.reward.shape == (2,)
