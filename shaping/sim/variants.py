"""Randomized tenant variants: new tenants for pretraining a model that must serve tenants it never saw.

A variant keeps a scenario's network, its other tenants and the chosen tenant's entities and cap, and
gives that tenant a new mix of traffic classes drawn from a pool (the classes of other tenants, with
their loads and SLAs): another number of classes, other applications side by side, other SLAs. The
federation's universal model must map any tenant's mix to good actions; a few hand-written tenants
cover few mixes, so pretraining on variants (domain randomization) is what lets it generalize.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from shaping.config import ClassConfig, ScenarioConfig
from shaping.sim.scenarios import load_scenario


def class_pool(scenarios: Sequence[ScenarioConfig], tenants: Sequence[tuple[str, str]]) -> list[ClassConfig]:
    """The classes of the given (scenario name, tenant name) pairs: what variants draw from.

    Raises:
        KeyError: a pair names a scenario or tenant that is not there.
    """
    by_name = {sc.name: sc for sc in scenarios}
    pool: list[ClassConfig] = []
    for scenario, tenant in tenants:
        if scenario not in by_name:
            raise KeyError(f"no scenario {scenario!r} among {sorted(by_name)}")
        found = [t for t in by_name[scenario].tenants if t.name == tenant]
        if not found:
            raise KeyError(f"scenario {scenario!r} has no tenant {tenant!r}")
        pool.extend(copy.deepcopy(c) for c in found[0].classes)
    return pool


def tenant_variant(
    scenario: ScenarioConfig, tenant: str, pool: Sequence[ClassConfig], rng: np.random.Generator, *,
    min_classes: int = 2, max_classes: int = 4, name: str | None = None, path_scale: float = 1.0,
) -> ScenarioConfig:  # fmt: skip
    """A copy of `scenario` whose `tenant` carries a random mix of pool classes.

    Args:
        scenario: the network and the other tenants (unchanged).
        tenant: the tenant whose classes are replaced (its entities and cap are kept).
        pool: the classes to draw from, without replacement (loads, flows, protocols, SLAs kept).
        rng: the draw's randomness.
        min_classes, max_classes: bounds of the number of classes (at most the pool's size).
        name: the variant scenario's name (default: ``<scenario>~<tenant>~<first draw>``).
        path_scale: with a value above 1, each path's capacity and base delay are also multiplied by
            independent log-uniform factors in [1 / path_scale, path_scale] (network randomization:
            the same slot on faster, slower, nearer and farther paths); 1 keeps the network.
    Returns:
        The variant; each drawn class sits on a random entity of the tenant, named ``<app><i>``, its
        ports moved up where they would collide with a class already placed.
    """
    if path_scale < 1:
        raise ValueError(f"path_scale must be >= 1, got {path_scale}")
    idx = [i for i, t in enumerate(scenario.tenants) if t.name == tenant]
    if not idx:
        raise KeyError(f"scenario {scenario.name!r} has no tenant {tenant!r}")
    hi = min(max_classes, len(pool))
    if not 1 <= min_classes <= hi:
        raise ValueError(f"cannot draw {min_classes}..{max_classes} classes from a pool of {len(pool)}")
    k = int(rng.integers(min_classes, hi + 1))
    drawn = [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]
    owner = scenario.tenants[idx[0]]
    used: set[tuple[str, int]] = set()
    classes = []
    for i, c in enumerate(drawn):
        ports = []
        for port in c.ports:
            while (c.protocol, port) in used:
                port += 1
            used.add((c.protocol, port))
            ports.append(port)
        entity = owner.entities[int(rng.integers(len(owner.entities)))].name
        classes.append(replace(copy.deepcopy(c), name=f"{c.app}{i}", entity=entity, ports=ports, dst_cidrs=[]))
    tenants = list(scenario.tenants)
    tenants[idx[0]] = replace(owner, classes=classes)
    tag = name or f"{scenario.name}~{tenant}~{int(rng.integers(1 << 30))}"
    paths = scenario.paths
    if path_scale > 1:  # drawn last, so path_scale=1 gives the same variants as before it existed
        span = np.log(path_scale)
        paths = [replace(p, capacity_mbps=p.capacity_mbps * float(np.exp(rng.uniform(-span, span))),
                         base_delay_ms=p.base_delay_ms * float(np.exp(rng.uniform(-span, span))))
                 for p in scenario.paths]  # fmt: skip
    return replace(scenario, name=tag, tenants=tenants, paths=list(paths))


def write_scenario(scenario: ScenarioConfig, path: str | Path) -> Path:
    """Write a scenario as YAML that shaping.sim.scenarios.load_scenario reads back; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(scenario), p)
    return p


def write_variants(
    slots: Sequence[tuple[str, str]], pool_tenants: Sequence[tuple[str, str]], count: int, seed: int,
    directory: str | Path, *, path_scale: float = 1.0, prefix: str = "variant",
) -> list[tuple[str, str]]:  # fmt: skip
    """Draw `count` variants and write each as ``directory/<prefix>NNN.yaml``.

    Args:
        slots: (scenario name or YAML path, tenant) pairs; each variant takes one at random.
        pool_tenants: (scenario, tenant) pairs whose classes are drawn from.
        count, seed: how many variants, and the seed of every draw (the same seed writes the same files).
        path_scale: network randomization (tenant_variant).
        prefix: the files' and the variant scenarios' name prefix.
    Returns:
        (YAML path, tenant) of each variant, for a simulated tenant's task.
    """
    names = list(dict.fromkeys([s for s, _ in slots] + [s for s, _ in pool_tenants]))
    scenarios = {name: load_scenario(name) for name in names}
    # Pool entries name scenarios by their loaded name (a YAML path loads under the name inside it).
    pool = class_pool(list(scenarios.values()), [(scenarios[s].name, t) for s, t in pool_tenants])
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        scenario, tenant = slots[int(rng.integers(len(slots)))]
        variant = tenant_variant(scenarios[scenario], tenant, pool, rng, name=f"{prefix}{i:03d}",
                                 path_scale=path_scale)  # fmt: skip
        out.append((str(write_scenario(variant, Path(directory) / f"{prefix}{i:03d}.yaml")), tenant))
    return out
