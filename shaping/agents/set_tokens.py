"""Tokens of a tenant's observation: one per traffic class, one per path and one for the tenant, for any counts.

The set policy (shaping.agents.set_policy) reads a tenant as sets, so that one model runs on any number
of classes and paths without padding. A TenantStructure holds, for one tenant, the indices that cut its
flat observation (shaping.spec.observation, in ObservationLayout's block order) into token features, plus
the tenant's constant context (applications, SLAs, published path figures). It is built once per tenant;
``tokens`` (torch) and ``tokens_numpy`` compute the same float32 features.

| token  | features (all roughly in [0, 1] or a few units)                                            |
|--------|---------------------------------------------------------------------------------------------|
| class  | its entity's util and loss, its VM's CPU and memory (0 off a VM), rtt, app, offered, delivered, |
|        | the plan in force (rate, ceil, priority, dscp, drop); its application (one-hot), on-a-VM flag,|
|        | latency SLA (flag, max p99 / RTT_SCALE_MS), rate SLA (flag, min / cap), loss SLA (flag, max),|
|        | application floor, nominal rate / cap; then the four measured figures of the path it is on   |
| path   | delay, loss, util, share; published capacity / cap, base delay / RTT_SCALE_MS, published    |
|        | flag; the fraction of classes that take it                                                   |
| tenant | the plan's root rate, classes / 16, paths / 4; then the mean class and mean path features    |

Every feature of a class or path depends on that class or path alone (or on sets, through means), so
permuting the classes or paths permutes the tokens and nothing else. ``plan_path`` (which path each class
takes) also reaches the policy directly, as a bias on the path choice (``current_path``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from shaping.config import APPS
from shaping.spec import ObservationLayout, TenantSpec
from shaping.spec.observation import LOAD_CLIP, RTT_SCALE_MS

Array = np.ndarray[Any, Any]

#: Class features gathered from the observation, by block name.
CLASS_DYNAMIC = (
    "entity_util", "entity_loss", "vm_cpu", "vm_memory", "class_rtt", "class_app", "class_offered",
    "class_delivered", "plan_rate", "plan_ceil", "plan_priority", "plan_dscp", "plan_drop",
)  # fmt: skip
#: Constant class features (after the application one-hot).
CLASS_STATIC = (
    "on_vm", "has_latency_sla", "latency_sla", "has_rate_sla", "rate_sla", "has_loss_sla", "loss_sla",
    "app_floor", "nominal_rate",
)  # fmt: skip
#: Measured path features (also appended to a class token for the path the class is on).
PATH_DYNAMIC = ("path_delay", "path_loss", "path_util", "path_share")
#: Constant path features.
PATH_STATIC = ("capacity", "base_delay", "published")
#: Features of the tenant token before the means of the class and path features.
TENANT_OWN = ("plan_root", "classes", "paths")

#: Token feature sizes (fixed for every tenant: what makes one model fit all of them).
CLASS_DIM = len(CLASS_DYNAMIC) + len(APPS) + len(CLASS_STATIC) + len(PATH_DYNAMIC)
PATH_DIM = len(PATH_DYNAMIC) + len(PATH_STATIC) + 1
TENANT_DIM = len(TENANT_OWN) + CLASS_DIM + PATH_DIM
#: Scales of the count features: the largest counts the policy is meant for.
MAX_CLASSES = 16
MAX_PATHS = 4


@dataclass(frozen=True)
class TenantStructure:
    """Index maps from one tenant's flat observation to its tokens (build with ``of``).

    The observation is extended with its constants, ``ext = concat(obs, consts)``; every gathered feature
    is ``ext[index]``, so one fancy index builds all class, path or tenant features at once.
    """

    n_classes: int
    n_paths: int
    obs_dim: int
    consts: Array
    """(n_consts,) float32 appended to the observation: 0, then the static features."""
    class_index: Array
    """(C, len(CLASS_DYNAMIC) + len(APPS) + len(CLASS_STATIC)) int64 into ext."""
    path_index: Array
    """(P, len(PATH_DYNAMIC) + len(PATH_STATIC)) int64 into ext."""
    tenant_index: Array
    """(len(TENANT_OWN),) int64 into ext."""
    plan_path_index: Array
    """(C, P) int64 into the observation: the one-hot of the path each class takes."""
    #: The constants and indices as tensors, per device: built once, not at every step.
    _tensors: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, spec: TenantSpec) -> TenantStructure:
        """The structure of a tenant (any number of classes and paths, at least one of each)."""
        layout = ObservationLayout(spec)
        nc, np_ = len(spec.classes), len(spec.paths)
        if nc < 1 or np_ < 1:
            raise ValueError(f"tenant {spec.name!r} has {nc} classes and {np_} paths; the set policy needs one of each")
        offsets: dict[str, int] = {}
        off = 0
        for name, labels in layout.blocks:
            offsets[name] = off
            off += len(labels)
        consts: list[float] = [0.0]

        def const(value: float) -> int:
            consts.append(float(value))
            return off + len(consts) - 1

        zero = off  # ext[zero] is 0
        vm_names = [v.name for v in spec.vms]
        rows = []
        for c, tc in enumerate(spec.classes):
            e = spec.entity_index(tc.entity)
            v = vm_names.index(tc.entity) if tc.entity in vm_names else None
            q = tc.qos
            row = [
                offsets["entity_util"] + e, offsets["entity_loss"] + e,
                zero if v is None else offsets["vm_cpu"] + v, zero if v is None else offsets["vm_memory"] + v,
                *(offsets[b] + c for b in ("class_rtt", "class_app", "class_offered", "class_delivered")),
                *(offsets[b] + c for b in ("plan_rate", "plan_ceil", "plan_priority", "plan_dscp", "plan_drop")),
                *(const(float(tc.app == app)) for app in APPS),
                const(v is not None),
                const(q.max_p99_ms is not None), const((q.max_p99_ms or 0.0) / RTT_SCALE_MS),
                const(q.min_mbps is not None), const(min((q.min_mbps or 0.0) / spec.cap_mbps, LOAD_CLIP)),
                const(q.max_loss is not None), const(q.max_loss or 0.0),
                const(q.app_floor or 0.0), const(min(tc.mbps / spec.cap_mbps, LOAD_CLIP)),
            ]  # fmt: skip
            rows.append(row)
        published = bool(spec.path_mbps)
        paths = []
        for p in range(np_):
            mbps = spec.path_mbps[p] if published else spec.cap_mbps
            delay = spec.path_delay_ms[p] if p < len(spec.path_delay_ms) else 0.0
            paths.append([
                *(offsets[b] + p for b in PATH_DYNAMIC),
                const(min(mbps / spec.cap_mbps, LOAD_CLIP)), const(delay / RTT_SCALE_MS), const(published),
            ])  # fmt: skip
        tenant = [offsets["plan_root"], const(nc / MAX_CLASSES), const(np_ / MAX_PATHS)]
        plan_path = [[offsets["plan_path"] + c * np_ + p for p in range(np_)] for c in range(nc)]
        return cls(
            n_classes=nc,
            n_paths=np_,
            obs_dim=layout.size,
            consts=np.array(consts, dtype=np.float32),
            class_index=np.array(rows, dtype=np.int64),
            path_index=np.array(paths, dtype=np.int64),
            tenant_index=np.array(tenant, dtype=np.int64),
            plan_path_index=np.array(plan_path, dtype=np.int64),
        )

    def tokens(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token features of observations (..., obs_dim).

        Returns:
            class tokens (..., C, CLASS_DIM), path tokens (..., P, PATH_DIM), the tenant token (..., TENANT_DIM)
            and the plan's path one-hot (..., C, P).
        """
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observation of length {obs.shape[-1]}, the tenant's layout has {self.obs_dim}")
        obs = obs.float()
        key = str(obs.device)
        if key not in self._tensors:
            arrays = (self.consts, self.class_index, self.path_index, self.tenant_index, self.plan_path_index)
            self._tensors[key] = tuple(torch.as_tensor(a, device=obs.device) for a in arrays)
        consts, class_index, path_index, tenant_index, plan_path_index = self._tensors[key]
        ext = torch.cat([obs, consts.expand(*obs.shape[:-1], -1)], -1)
        on_path = ext[..., plan_path_index]
        path_raw = ext[..., path_index]
        path_dyn = path_raw[..., : len(PATH_DYNAMIC)]
        cls_tok = torch.cat([ext[..., class_index], on_path @ path_dyn], -1)
        path_tok = torch.cat([path_raw, on_path.mean(-2).unsqueeze(-1)], -1)
        ten_tok = torch.cat([ext[..., tenant_index], cls_tok.mean(-2), path_tok.mean(-2)], -1)
        return cls_tok, path_tok, ten_tok, on_path

    def tokens_numpy(self, obs: Array) -> tuple[Array, Array, Array, Array]:
        """``tokens`` in numpy (float32), for observations (..., obs_dim)."""
        x = np.asarray(obs, dtype=np.float32)
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"observation of length {x.shape[-1]}, the tenant's layout has {self.obs_dim}")
        consts = np.broadcast_to(self.consts, (*x.shape[:-1], self.consts.shape[0]))
        ext = np.concatenate([x, consts], -1)
        on_path = ext[..., self.plan_path_index]
        path_raw = ext[..., self.path_index]
        cls_tok = np.concatenate([ext[..., self.class_index], on_path @ path_raw[..., : len(PATH_DYNAMIC)]], -1)
        path_tok = np.concatenate([path_raw, on_path.mean(-2)[..., None]], -1)
        ten_tok = np.concatenate([ext[..., self.tenant_index], cls_tok.mean(-2), path_tok.mean(-2)], -1)
        return cls_tok, path_tok, ten_tok, on_path
