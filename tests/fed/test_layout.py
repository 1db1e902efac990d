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


@pytest.mark.parametrize("name", SCENARIOS)
def test_measured_features_and_constant_features_are_apart(name):
    # What a tenant measures lands outside the constant features; what is constant for it lands inside.
    layout = UniversalLayout()
    constant = layout.constant_features()
    assert constant.shape == (layout.obs_dim,) and not constant[: layout.dynamic_dim].any()
    for spec in scenario_specs(load_scenario(name)):
        m = tenant_mapping(spec, layout)
        assert not constant[m.obs_dst].any()
        assert (m.static[~constant] == 0).all() and (m.static[constant] != 0).any()


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
    # The per-path blocks follow the VMs' in path order, then the plan in force by class slot.
    delay0 = rtt0 + 4 * layout.max_classes + 2 * layout.max_vms
    for p, path in enumerate(spec.paths):
        assert out[delay0 + p] == obs[0, names.index(f"path_delay[{path}]")]
    rate0 = delay0 + 4 * layout.max_paths
    for c in range(len(spec.classes)):
        assert out[rate0 + slots[c]] == obs[0, names.index(f"plan_rate[{spec.classes[c].name}]")]
    onehot0 = rate0 + 5 * layout.max_classes
    c, p = 2, 1
    where = onehot0 + slots[c] * layout.max_paths + p
    assert out[where] == obs[0, names.index(f"plan_path[{spec.classes[c].name}@{spec.paths[p]}]")]
    assert out[layout.dynamic_dim - 1] == obs[0, names.index("plan_root[root]")]
    # The static block: one-hot of each class's application and a present flag.
    static0 = layout.dynamic_dim
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


def _context(out, layout):
    """The context block of a universal observation: (class SLAs, (paths, 3) path figures)."""
    static0 = layout.dynamic_dim
    sla0 = static0 + layout.max_classes * (len(APPS) + 1)
    return out[sla0 : sla0 + layout.max_classes], out[sla0 + layout.max_classes :].reshape(layout.max_paths, 3)


def test_context_carries_the_class_slas_and_the_published_paths():
    scenario = load_scenario("small_congested")
    spec = scenario_specs(scenario)[1]  # studio: gaming (40 ms SLA), video, bulk; uplink and an LTE backup
    layout = UniversalLayout()
    m = tenant_mapping(spec, layout)
    out = m.observation(torch.zeros(1, ObservationLayout(spec).size))[0]
    slas, paths = _context(out, layout)
    slots = class_slots(spec)
    for c, tc in enumerate(spec.classes):
        want = tc.qos.max_p99_ms / 100.0 if tc.qos.max_p99_ms is not None else 0.0
        assert slas[slots[c]].item() == pytest.approx(want)
    assert slas[3] == 0  # the empty slot
    for i, p in enumerate(scenario.paths):
        assert paths[i].tolist() == pytest.approx([1.0, p.capacity_mbps / spec.cap_mbps, p.base_delay_ms / 100.0])
    assert paths[2].tolist() == [0.0, 0.0, 0.0]  # no third path
    # The LTE backup's delay (45 ms) is above the gaming class's SLA (40 ms): the model can see it.
    assert paths[1, 2] > slas[slots[0]]


def test_context_tells_networks_apart_and_clips_huge_paths():
    layout = UniversalLayout()
    dc = scenario_specs(load_scenario("datacenter"))[0]
    small = scenario_specs(load_scenario("small_congested"))[0]
    _, dc_paths = _context(tenant_mapping(dc, layout).static, layout)
    _, small_paths = _context(tenant_mapping(small, layout).static, layout)
    assert not torch.equal(dc_paths, small_paths)
    assert dc_paths[:, 1].max() <= 4.0  # 10 Gbit/s spines against a tenant's cap: clipped to LOAD_CLIP


def test_context_of_a_spec_without_published_paths_is_only_the_present_flags():
    import dataclasses

    spec = dataclasses.replace(scenario_specs(load_scenario("default"))[0], path_mbps=(), path_delay_ms=())
    layout = UniversalLayout()
    _, paths = _context(tenant_mapping(spec, layout).static, layout)
    assert paths[:, 0].tolist() == [1.0, 1.0, 0.0] and paths[:, 1:].abs().sum() == 0
