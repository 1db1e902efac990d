"""One model for every tenant: a padded observation/action layout that any tenant's own layout maps into.

Tenants differ in entities, classes, VMs and paths, so their own ActorCritic shapes differ and their
weights cannot be averaged. The federation trains one ActorCritic over a fixed *universal* layout:

- observation: every block of shaping.spec.observation padded to the maximum count (zeros where a
  tenant has fewer; the plan's class x path one-hot as class slots x path slots), then per class
  slot a one-hot of the application and a present flag, so the shared policy knows which
  application sits in each slot, then the tenant's *context*: per class
  slot its latency SLA (max p99 / RTT_SCALE_MS, 0 without one) and per path slot a present flag, the
  path's capacity / the tenant's cap (clipped to LOAD_CLIP) and its base delay / RTT_SCALE_MS. The
  context is constant for a tenant, so a tenant's own model has no use for it; a model shared by
  tenants does: a path that suits gaming in one network (a 2 ms spine) breaks it in another (a
  45 ms LTE backup), and without the context the two look the same;
- action: ``max_classes`` slots of the six per-class fields (each field padded to its largest number
  of choices), then the root rate. Choices a tenant does not have (a third path, an empty class slot)
  are outside its envelope, so the policy can never pick them.

A tenant's classes take slots in application order (gaming, transactions, video, bulk, web), so a
gaming class of one tenant and a gaming class of another usually share a slot's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shaping.agents.envelope import Envelope, build_envelope
from shaping.config import APPS, RewardConfig
from shaping.sim.scenarios import load_scenario
from shaping.sim.tenant_view import TenantView
from shaping.sim.vector_env import ShapingVectorEnv, TorchStep
from shaping.spec import TenantSpec
from shaping.spec.action import ACTION_FIELDS
from shaping.spec.observation import LOAD_CLIP, RTT_SCALE_MS

#: Values per path slot in the context block: present flag, capacity / cap, base delay.
PATH_CONTEXT = 3


@dataclass(frozen=True)
class UniversalLayout:
    """Sizes of the shared layout; every tenant of a federation must fit inside them."""

    max_entities: int = 4
    max_classes: int = 4
    max_vms: int = 2
    per_class: tuple[int, ...] = (4, 8, 5, 4, 5, 3)
    """Largest number of choices of each ACTION_FIELDS field over the tenants."""
    root_levels: int = 8

    @property
    def obs_dim(self) -> int:
        """Length of the universal observation."""
        c = self.max_classes
        return self.dynamic_dim + c * (len(APPS) + 1) + c + PATH_CONTEXT * self.max_paths

    @property
    def dynamic_dim(self) -> int:
        """Length of the observation's measured part (the padded blocks of shaping.spec.observation); the
        rest (application one-hots, present flags, the context) is constant for a tenant."""
        c, p = self.max_classes, self.max_paths
        # The class, VM and entity blocks, four per-path blocks, five plan blocks per class, the plan's
        # class x path one-hot and the plan's root rate (ObservationLayout's order).
        return 2 * self.max_entities + 4 * c + 2 * self.max_vms + 4 * p + 5 * c + c * p + 1

    def constant_features(self) -> torch.Tensor:
        """(obs_dim,) bool: the features that are constant for any one tenant (what tells tenants apart)."""
        mask = torch.zeros(self.obs_dim, dtype=torch.bool)
        mask[self.dynamic_dim :] = True
        return mask

    @property
    def max_paths(self) -> int:
        """Path slots: the largest number of path choices."""
        return self.per_class[ACTION_FIELDS.index("path")]

    @property
    def nvec(self) -> tuple[int, ...]:
        """MultiDiscrete sizes of the universal action."""
        return tuple(self.per_class) * self.max_classes + (self.root_levels,)

    def to_config(self) -> dict[str, Any]:
        """Plain values (checkpoints, run config)."""
        return {"max_entities": self.max_entities, "max_classes": self.max_classes, "max_vms": self.max_vms,
                "per_class": list(self.per_class), "root_levels": self.root_levels}  # fmt: skip


def class_slots(spec: TenantSpec) -> list[int]:
    """Slot of each class of the spec (in spec order): classes sorted stably by application."""
    order = sorted(range(len(spec.classes)), key=lambda c: APPS.index(spec.classes[c].app))
    slots = [0] * len(order)
    for slot, c in enumerate(order):
        slots[c] = slot
    return slots


@dataclass(frozen=True)
class TenantMapping:
    """Index maps between one tenant's own layout and the universal one."""

    layout: UniversalLayout
    obs_src: torch.Tensor
    """Indices into the tenant's observation..."""
    obs_dst: torch.Tensor
    """...and where they go in the universal observation."""
    static: torch.Tensor
    """(obs_dim,) the constant part of the universal observation (application one-hots, present flags)."""
    act_src: torch.Tensor
    """For each dimension of the tenant's action, the universal action dimension it is read from."""
    envelope: Envelope
    """The tenant's envelope in the universal action layout."""

    def observation(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, universal obs_dim) observations from (B, tenant obs_dim) ones."""
        out = self.static.to(obs.device, obs.dtype).expand(obs.shape[0], -1).clone()
        out[:, self.obs_dst.to(obs.device)] = obs[:, self.obs_src.to(obs.device)]
        return out

    def action(self, action: torch.Tensor) -> torch.Tensor:
        """(B, tenant action dims) actions from (B, universal action dims) ones."""
        return action[:, self.act_src.to(action.device)]


def path_context(spec: TenantSpec, max_paths: int) -> torch.Tensor:
    """(max_paths, PATH_CONTEXT) per path slot: present flag, capacity / the tenant's cap (clipped to
    LOAD_CLIP), base delay / RTT_SCALE_MS; an empty slot is zeros, and so are a path's figures when
    the spec does not publish them."""
    ctx = torch.zeros(max_paths, PATH_CONTEXT)
    ctx[: len(spec.paths), 0] = 1.0
    for i, (mbps, delay) in enumerate(zip(spec.path_mbps, spec.path_delay_ms, strict=False)):
        ctx[i, 1] = min(mbps / spec.cap_mbps, LOAD_CLIP)
        ctx[i, 2] = delay / RTT_SCALE_MS
    return ctx


def tenant_mapping(spec: TenantSpec, layout: UniversalLayout, envelope: Envelope | None = None) -> TenantMapping:
    """The maps of one tenant; raises ValueError when the tenant does not fit the layout."""
    ne, nc, nv = len(spec.entities), len(spec.classes), len(spec.vms)
    if ne > layout.max_entities or nc > layout.max_classes or nv > layout.max_vms:
        raise ValueError(f"tenant {spec.name} has {ne} entities, {nc} classes, {nv} VMs; the federation's "
                         f"layout holds {layout.max_entities}, {layout.max_classes}, {layout.max_vms}")  # fmt: skip
    own_envelope = envelope or build_envelope(spec)
    nf = len(ACTION_FIELDS)
    own_per_class = own_envelope.nvec[:nf] if nc else ()
    if any(n > m for n, m in zip(own_per_class, layout.per_class, strict=True)):
        raise ValueError(f"tenant {spec.name} has action choices {own_per_class}, layout allows {layout.per_class}")
    slots = class_slots(spec)
    np_, mp = len(spec.paths), layout.max_paths
    if np_ > mp:
        raise ValueError(f"tenant {spec.name} has {np_} paths; the federation's layout holds {mp}")
    # Observation blocks in ObservationLayout order: (count, max count, slot of each element).
    blocks = [(ne, layout.max_entities, list(range(ne)))] * 2 + [(nc, layout.max_classes, slots)] * 4
    blocks += [(nv, layout.max_vms, list(range(nv)))] * 2
    blocks += [(np_, mp, list(range(np_)))] * 4 + [(nc, layout.max_classes, slots)] * 5
    blocks += [(nc * np_, layout.max_classes * mp, [slots[c] * mp + p for c in range(nc) for p in range(np_)])]
    blocks += [(1, 1, [0])]
    src: list[int] = []
    dst: list[int] = []
    s_off = d_off = 0
    for count, cap, where in blocks:
        src += [s_off + i for i in range(count)]
        dst += [d_off + where[i] for i in range(count)]
        s_off, d_off = s_off + count, d_off + cap
    static = torch.zeros(layout.obs_dim)
    sla_off = d_off + layout.max_classes * (len(APPS) + 1)
    for c, tc in enumerate(spec.classes):
        base = d_off + slots[c] * (len(APPS) + 1)
        static[base + APPS.index(tc.app)] = 1.0
        static[base + len(APPS)] = 1.0
        if tc.qos.max_p99_ms is not None:
            static[sla_off + slots[c]] = tc.qos.max_p99_ms / RTT_SCALE_MS
    static[sla_off + layout.max_classes :] = path_context(spec, layout.max_paths).flatten()
    # Actions: class c's fields come from its slot's fields; the root rate from the last dimension.
    act_src = [slots[c] * nf + f for c in range(nc) for f in range(nf)] + [layout.max_classes * nf]
    masks: list[tuple[bool, ...]] = []
    by_slot = {slots[c]: c for c in range(nc)}
    for slot in range(layout.max_classes):
        for f, width in enumerate(layout.per_class):
            if slot in by_slot:
                own = own_envelope.masks[by_slot[slot] * nf + f]
                masks.append(tuple(own) + (False,) * (width - len(own)))
            else:  # an empty slot: its dimension is ignored, so pin it to choice 0
                masks.append((True,) + (False,) * (width - 1))
    root = own_envelope.masks[-1]
    masks.append(tuple(root) + (False,) * (layout.root_levels - len(root)))
    return TenantMapping(
        layout=layout,
        obs_src=torch.tensor(src, dtype=torch.long),
        obs_dst=torch.tensor(dst, dtype=torch.long),
        static=static,
        act_src=torch.tensor(act_src, dtype=torch.long),
        envelope=Envelope(tuple(masks), own_envelope.relaxed),
    )


class PaddedEnv:
    """A ShapingVectorEnv seen through the universal layout (the TorchVecEnv protocol of shaping.agents)."""

    def __init__(self, env: ShapingVectorEnv, layout: UniversalLayout) -> None:
        self.env = env
        self.mapping = tenant_mapping(env.view.observation.spec, layout)

    @property
    def num_envs(self) -> int:
        """Environments in the batch."""
        return self.env.num_envs

    @property
    def view(self) -> TenantView:
        """The tenant's view of the simulator (spec, QoS), as on ShapingVectorEnv."""
        return self.env.view

    def reset_torch(self, *, seed: int | None = None) -> torch.Tensor:
        """Reset every environment; universal observations."""
        return self.mapping.observation(self.env.reset_torch(seed=seed))

    def step_torch(self, actions: torch.Tensor) -> TorchStep:
        """Step with universal actions; the result carries universal observations."""
        res = self.env.step_torch(self.mapping.action(torch.as_tensor(actions, device=self.env.device)))
        return res._replace(obs=self.mapping.observation(res.obs))


@dataclass(frozen=True)
class TenantTask:
    """One tenant of the federation in simulation: which tenant of which scenario, and how much data."""

    scenario: str
    """Scenario name (conf/scenario/) or YAML path."""
    tenant: str
    """The controlled tenant of that scenario."""
    num_envs: int = 8
    """Environments simulated per local iteration: the tenant's amount of data."""

    @property
    def name(self) -> str:
        """Identity of the tenant in reports: ``tenant@scenario``."""
        return f"{self.tenant}@{self.scenario}"


def make_env(task: TenantTask, layout: UniversalLayout, num_envs: int | None = None, *,
             reward: RewardConfig | None = None, episode_steps: int | None = None) -> PaddedEnv:  # fmt: skip
    """The tenant's batched simulator seen through the federation's layout."""
    env = ShapingVectorEnv(num_envs or task.num_envs, load_scenario(task.scenario), tenant=task.tenant,
                           reward=reward, max_episode_steps=episode_steps)  # fmt: skip
    return PaddedEnv(env, layout)
