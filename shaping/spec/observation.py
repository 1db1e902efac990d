"""Observation layout: the state vector an agent sees, built the same way from simulator and kernel.

Layout for a tenant with E entities, C classes and V VMs (in the spec's order), every value
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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shaping.spec.metrics import ClassMetrics, HostMetrics
from shaping.spec.tenant import TenantSpec

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
    _consts: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def blocks(self) -> list[tuple[str, list[str]]]:
        """Block names with the label of every element, in layout order."""
        ents = [e.name for e in self.spec.entities]
        cls = [c.name for c in self.spec.classes]
        vms = [v.name for v in self.spec.vms]
        return [
            ("entity_util", ents),
            ("entity_loss", ents),
            ("class_rtt", cls),
            ("class_app", cls),
            ("class_offered", cls),
            ("class_delivered", cls),
            ("vm_cpu", vms),
            ("vm_memory", vms),
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

    def build(self, m: ClassMetrics, host: HostMetrics) -> torch.Tensor:
        """Observation of shape (..., size) from class metrics (..., C) and VM metrics (..., V)."""
        dev = m.offered_mbps.device
        cap = self.spec.cap_mbps
        key = str(dev)
        if key not in self._consts:
            self._consts[key] = (self.entity_matrix(dev), self.rtt_scale(dev))
        ent, rtt_scale = self._consts[key]
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
        ]
        return torch.cat(parts, dim=-1).float()
