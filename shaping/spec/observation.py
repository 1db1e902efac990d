"""Observation layout: the state vector an agent sees, built the same way from simulator and kernel.

Layout for a tenant with E entities, C classes, V VMs and P paths (in the spec's order), every value
normalized to roughly [0, 1] by a fixed scale so a policy trained in simulation reads the same
numbers on a real host:

| block            | size | value                                                        |
|------------------|------|--------------------------------------------------------------|
| entity_util      | E    | delivered rate of the entity's classes / tenant cap            |
| entity_loss      | E    | lost bytes / offered bytes of the entity's classes             |
| class_rtt        | C    | p99 delay / the class's latency SLA (RTT_SCALE_MS without one), clipped to RTT_CLIP |
| class_app        | C    | application metric (FPS/60, completion rate, video QoE, ...)  |
| class_offered    | C    | offered rate / tenant cap, clipped to LOAD_CLIP                |
| class_delivered  | C    | delivered rate / tenant cap                                    |
| vm_cpu           | V    | CPU utilization of each VM                                     |
| vm_memory        | V    | memory utilization of each VM                                  |
| path_delay       | P    | a probe's one-way delay on the path / RTT_SCALE_MS, clipped to RTT_CLIP |
| path_loss        | P    | fraction of a probe's packets lost on the path (1: down)       |
| path_util        | P    | the tenant's delivered rate over the path / the path's published capacity |
| path_share       | P    | the tenant's delivered rate over the path / its delivered rate over all |
| plan_rate        | C    | guaranteed rate in force / tenant cap                          |
| plan_ceil        | C    | ceiling in force / tenant cap                                  |
| plan_priority    | C    | HTB priority in force / (priority_levels - 1)                  |
| plan_dscp        | C    | DSCP mark in force / 63                                        |
| plan_drop        | C    | drop probability in force                                      |
| plan_path        | C x P| one-hot of the path each class takes, class-major              |
| plan_root        | 1    | aggregate (root) rate in force / tenant cap                    |

The per-path block lets a policy see a path fail or degrade; the plan block tells it what it (or the
rules before it) set, so a policy can act on the change it sees rather than re-deriving it.
LAYOUT_VERSION names this layout; checkpoints carry it and a model of another layout is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shaping.spec.metrics import ClassMetrics, HostMetrics, PathMetrics
from shaping.spec.plan import PlanBatch
from shaping.spec.tenant import TenantSpec

#: Version of the observation layout above (bumped with every change of its blocks or scales).
LAYOUT_VERSION = 2

#: Delay scale for classes without a latency SLA, milliseconds.
RTT_SCALE_MS = 100.0
#: Upper clip of normalized delays.
RTT_CLIP = 10.0
#: Upper clip of normalized offered load.
LOAD_CLIP = 4.0


@dataclass(frozen=True)
class ObservationLayout:
    """The observation layout of one tenant."""

    spec: TenantSpec
    #: Constant tensors of build(), per device: built once, not at every control step.
    _consts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def blocks(self) -> list[tuple[str, list[str]]]:
        """Block names with the label of every element, in layout order."""
        ents = [e.name for e in self.spec.entities]
        cls = [c.name for c in self.spec.classes]
        vms = [v.name for v in self.spec.vms]
        paths = list(self.spec.paths)
        return [
            ("entity_util", ents),
            ("entity_loss", ents),
            ("class_rtt", cls),
            ("class_app", cls),
            ("class_offered", cls),
            ("class_delivered", cls),
            ("vm_cpu", vms),
            ("vm_memory", vms),
            ("path_delay", paths),
            ("path_loss", paths),
            ("path_util", paths),
            ("path_share", paths),
            ("plan_rate", cls),
            ("plan_ceil", cls),
            ("plan_priority", cls),
            ("plan_dscp", cls),
            ("plan_drop", cls),
            ("plan_path", [f"{c}@{p}" for c in cls for p in paths]),
            ("plan_root", ["root"]),
        ]

    @property
    def names(self) -> list[str]:
        """Label of each element, e.g. 'class_rtt[game]'."""
        return [f"{block}[{label}]" for block, labels in self.blocks for label in labels]

    @property
    def size(self) -> int:
        """Length of the observation vector."""
        return sum(len(labels) for _, labels in self.blocks)

    def entity_matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(C, E) one-hot matrix mapping each class to its entity."""
        m = torch.zeros(len(self.spec.classes), len(self.spec.entities), device=device)
        for c, tc in enumerate(self.spec.classes):
            m[c, self.spec.entity_index(tc.entity)] = 1.0
        return m

    def rtt_scale(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(C,) delay normalization: the latency SLA, else RTT_SCALE_MS."""
        return torch.tensor(
            [c.qos.max_p99_ms or RTT_SCALE_MS for c in self.spec.classes], dtype=torch.float32, device=device
        )

    def path_capacity(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(P,) the paths' published capacities, Mbit/s (the tenant's cap where the spec publishes none)."""
        mbps = self.spec.path_mbps or (self.spec.cap_mbps,) * len(self.spec.paths)
        return torch.tensor(mbps, dtype=torch.float32, device=device)

    def build(self, m: ClassMetrics, host: HostMetrics, paths: PathMetrics, plan: PlanBatch) -> torch.Tensor:
        """Observation of shape (..., size) from class metrics (..., C), VM metrics (..., V), path metrics
        (..., P) and the plan in force during the interval (PlanBatch fields (..., C))."""
        dev = m.offered_mbps.device
        cap = self.spec.cap_mbps
        key = str(dev)
        if key not in self._consts:
            self._consts[key] = (self.entity_matrix(dev), self.rtt_scale(dev), self.path_capacity(dev))
        ent, rtt_scale, path_mbps = self._consts[key]
        offered_e = m.offered_mbps @ ent
        lost_e = (m.offered_mbps * m.loss) @ ent
        parts = [
            (m.delivered_mbps @ ent) / cap,
            lost_e / offered_e.clamp_min(1e-9),
            (m.delay_p99_ms / rtt_scale).clamp(0.0, RTT_CLIP),
            m.app_metric,
            (m.offered_mbps / cap).clamp(0.0, LOAD_CLIP),
            m.delivered_mbps / cap,
            host.cpu,
            host.memory,
            (paths.delay_ms / RTT_SCALE_MS).clamp(0.0, RTT_CLIP),
            paths.loss.clamp(0.0, 1.0),
            (paths.delivered_mbps / path_mbps).clamp(0.0, 1.0),
            paths.delivered_mbps / paths.delivered_mbps.sum(-1, keepdim=True).clamp_min(1e-9),
            *self.plan_features(plan),
        ]
        return torch.cat([x.float() for x in parts], dim=-1)

    def plan_features(self, plan: PlanBatch) -> list[torch.Tensor]:
        """The plan blocks (plan_rate ... plan_root) of a plan whose fields are (..., C)."""
        cap = self.spec.cap_mbps
        levels = max(self.spec.priority_levels - 1, 1)
        n_paths = len(self.spec.paths)
        one_hot = torch.nn.functional.one_hot(plan.path.long().clamp(0, n_paths - 1), n_paths)
        return [
            (plan.rate_mbps / cap).clamp(0.0, 1.0),
            (plan.ceil_mbps / cap).clamp(0.0, 1.0),
            plan.priority.float().clamp(0.0, levels) / levels,
            plan.dscp.float() / 63.0,
            plan.drop_prob.float(),
            one_hot.flatten(-2).float(),
            (plan.root_mbps[..., :1] / cap).clamp(0.0, 1.0),
        ]
