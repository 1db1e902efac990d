"""Randomized tenant variants: valid scenarios with new class mixes, drawn only from the pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shaping.agents.universal import TenantTask, UniversalLayout, make_env
from shaping.sim.scenarios import load_scenario
from shaping.sim.variants import class_pool, tenant_variant, write_scenario, write_variants
from shaping.spec import scenario_specs

PAIRS = [("default", "bank"), ("default", "saas"), ("datacenter", "cloudgaming"), ("edge_gaming", "streamer")]


def _scenarios():
    return {n: load_scenario(n) for n in ("default", "datacenter", "edge_gaming")}


def test_pool_holds_exactly_the_named_tenants_classes():
    scs = _scenarios()
    pool = class_pool(list(scs.values()), PAIRS)
    expected = [c for s, t in PAIRS for c in next(x for x in scs[s].tenants if x.name == t).classes]
    assert pool == expected
    with pytest.raises(KeyError, match="no tenant 'nobody'"):
        class_pool(list(scs.values()), [("default", "nobody")])
    with pytest.raises(KeyError, match="no scenario 'mars'"):
        class_pool(list(scs.values()), [("mars", "bank")])


@pytest.mark.parametrize("seed", range(6))
def test_variant_is_a_valid_scenario_that_only_changes_the_tenants_classes(tmp_path, seed):
    scs = _scenarios()
    pool = class_pool(list(scs.values()), PAIRS)
    base = scs["default"]
    v = tenant_variant(base, "bank", pool, np.random.default_rng(seed), name=f"v{seed}")
    assert v.name == f"v{seed}" and v.paths == base.paths
    for old, new in zip(base.tenants, v.tenants, strict=True):
        if old.name != "bank":
            assert new == old
            continue
        assert (new.entities, new.cap_mbps, new.policy) == (old.entities, old.cap_mbps, old.policy)
        assert 2 <= len(new.classes) <= 4
        assert len({c.name for c in new.classes}) == len(new.classes)
        keys = [(c.protocol, p) for c in new.classes for p in c.ports]
        assert len(set(keys)) == len(keys)  # classification stays unambiguous
        entities = {e.name for e in new.entities}
        for c in new.classes:
            assert c.entity in entities
            assert any((c.app, c.mbps, c.flows, c.qos) == (p.app, p.mbps, p.flows, p.qos) for p in pool)
    # It survives the YAML round trip, compiles, and simulates.
    path = write_scenario(v, tmp_path / "v.yaml")
    assert load_scenario(str(path)) == v
    scenario_specs(v)
    env = make_env(TenantTask(str(path), "bank", 2), UniversalLayout())
    env.reset_torch(seed=0)


def test_variants_are_reproducible_and_differ_between_draws():
    scs = _scenarios()
    pool = class_pool(list(scs.values()), PAIRS)
    a = tenant_variant(scs["default"], "bank", pool, np.random.default_rng(3))
    b = tenant_variant(scs["default"], "bank", pool, np.random.default_rng(3))
    assert a == b
    mixes = {tuple(c.app for c in tenant_variant(scs["default"], "bank", pool, np.random.default_rng(s)).tenants[1]
                   .classes) for s in range(10)}  # fmt: skip
    assert len(mixes) >= 5


def test_refuses_an_unknown_tenant_or_a_pool_too_small():
    scs = _scenarios()
    pool = class_pool(list(scs.values()), PAIRS[:1])
    with pytest.raises(KeyError, match="no tenant"):
        tenant_variant(scs["default"], "nobody", pool, np.random.default_rng(0))
    with pytest.raises(ValueError, match="cannot draw 5"):
        tenant_variant(scs["default"], "bank", pool, np.random.default_rng(0), min_classes=5)


def test_path_scale_randomizes_the_network_within_its_bounds_and_1_keeps_it():
    scs = _scenarios()
    pool = class_pool(list(scs.values()), PAIRS)
    plain = tenant_variant(scs["default"], "bank", pool, np.random.default_rng(4))
    assert plain.paths == scs["default"].paths
    scaled = [tenant_variant(scs["default"], "bank", pool, np.random.default_rng(s), path_scale=2.0) for s in range(8)]
    # The classes are drawn first, so the same seed gives the same tenant on another network.
    assert scaled[4].tenants == plain.tenants
    ratios = [(v.capacity_mbps / p.capacity_mbps, v.base_delay_ms / p.base_delay_ms)
              for sc in scaled for v, p in zip(sc.paths, scs["default"].paths, strict=True)]  # fmt: skip
    assert all(0.5 <= r <= 2.0 for pair in ratios for r in pair)
    assert len({round(r, 6) for pair in ratios for r in pair}) == 2 * len(ratios)  # independent draws
    with pytest.raises(ValueError, match="path_scale"):
        tenant_variant(scs["default"], "bank", pool, np.random.default_rng(0), path_scale=0.5)


def test_write_variants_writes_loadable_reproducible_files(tmp_path):
    slots = [("default", "bank"), ("small_congested", "shop")]
    a = write_variants(slots, PAIRS, 4, 7, tmp_path / "a", path_scale=1.5, prefix="t")
    b = write_variants(slots, PAIRS, 4, 7, tmp_path / "b", path_scale=1.5, prefix="t")
    assert [t for _, t in a] == [t for _, t in b] and {t for _, t in a} <= {"bank", "shop"}
    assert [Path(p).name for p, _ in a] == [f"t{i:03d}.yaml" for i in range(4)]
    for (pa, tenant), (pb, _) in zip(a, b, strict=True):
        assert load_scenario(pa) == load_scenario(pb)
        make_env(TenantTask(pa, tenant, 1), UniversalLayout()).reset_torch(seed=0)


def test_random_tenants_under_random_actions_keep_every_metric_finite_and_in_range(tmp_path):
    """Property check on scenarios no test wrote by hand: 8 variants of the listed scenarios with networks
    randomized 4x each way, each driven by uniformly random actions (any mark, rate, drop, path) for
    10 steps in 4 environments. Observations, rewards and metrics stay finite, volumes and delays
    non-negative, loss within [0, 1] and no path above its capacity (tolerance 1e-4)."""
    import torch

    from shaping.sim.vector_env import ShapingVectorEnv

    slots = [(n, t.name) for n in ("default", "small_congested", "single_path", "datacenter", "edge_gaming")
             for t in load_scenario(n).tenants]  # fmt: skip
    g = torch.Generator().manual_seed(3)
    for path, tenant in write_variants(slots, slots, 8, 11, tmp_path, path_scale=4.0):
        env = ShapingVectorEnv(4, load_scenario(path), tenant=tenant)
        env.reset_torch(seed=0)
        nvec = torch.as_tensor(env.single_action_space.nvec)
        for _ in range(10):
            out = env.step_torch((torch.rand(4, len(nvec), generator=g) * nvec).long())
            assert torch.isfinite(out.obs).all() and torch.isfinite(out.reward).all(), path
            last = env.last_output
            assert last is not None
            for name, x in zip(last.metrics._fields, last.metrics, strict=True):
                assert torch.isfinite(x).all() and (x >= -1e-4).all(), (path, name)
            assert (last.metrics.loss <= 1.0 + 1e-4).all(), path
            assert (last.path_utilization <= 1.0 + 1e-4).all(), path
