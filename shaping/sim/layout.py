"""Compile a ScenarioConfig into the padded tensors the batched simulator works on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shaping.config import ScenarioConfig
from shaping.spec import QoSTensors, TenantSpec, qos_tensors, scenario_specs
from shaping.spec.action import ActionLayout
from shaping.traffic.apps import AppParams, app_code, app_row

#: Provider queues per path, in service order: EF (strict, policed), AF-high, AF-low, best effort.
N_QUEUES = 4
EF, AF_HIGH, AF_LOW, BEST_EFFORT = range(N_QUEUES)
#: Leaf queue limit of a tenant class, packets (Linux txqueuelen default, as HTB's pfifo leaves use).
LEAF_LIMIT_PACKETS = 1000.0


def dscp_queue_table() -> torch.Tensor:
    """(64,) provider queue of each DSCP value.

    EF, CS5, CS6, CS7 (40..63) go to EF; AF3x, AF4x, CS3, CS4 (24..39) to AF-high;
    AF1x, AF2x, CS2 (10..23) to AF-low; everything else (CS0, CS1 lower-effort) to best effort.
    """
    table = torch.full((64,), BEST_EFFORT, dtype=torch.long)
    table[10:24] = AF_LOW
    table[24:40] = AF_HIGH
    table[40:64] = EF
    return table


@dataclass
class ScenarioTensors:
    """Everything static about a scenario, as tensors on one device."""

    specs: list[TenantSpec]
    n_tenants: int
    n_classes: int
    n_entities: int
    n_paths: int
    class_valid: torch.Tensor  # (K, C) bool
    mbps: torch.Tensor  # (K, C) peak offered / max rate
    flows: torch.Tensor  # (K, C)
    apps: AppParams  # (K, C) each
    class_entity: torch.Tensor  # (K, C, E) one-hot
    entity_is_vm: torch.Tensor  # (K, E) bool
    vcpus: torch.Tensor  # (K, E)
    memory_gib: torch.Tensor  # (K, E)
    cap_mbps: torch.Tensor  # (K,)
    path_mbps: torch.Tensor  # (P,)
    path_delay_ms: torch.Tensor  # (P,)
    path_buffer_kbit: torch.Tensor  # (P,) per queue
    ef_cap: torch.Tensor  # (P,)
    af_weights: torch.Tensor  # (P, 3)
    dscp_queue: torch.Tensor  # (64,)
    qos: QoSTensors  # (K, C)
    levels: dict[str, torch.Tensor]
    leaf_limit_kbit: torch.Tensor  # (K, C)

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.cap_mbps.device


def compile_scenario(cfg: ScenarioConfig, device: torch.device | str = "cpu") -> ScenarioTensors:
    """Validate a scenario and lay it out as padded (K, C) / (K, E) / (P,) tensors."""
    specs = scenario_specs(cfg)
    dev = torch.device(device)
    k = len(specs)
    c = max(len(s.classes) for s in specs)
    e = max(len(s.entities) for s in specs)
    p = len(cfg.paths)
    valid = torch.zeros(k, c, dtype=torch.bool)
    mbps = torch.ones(k, c)
    flows = torch.ones(k, c)
    app = torch.full((k, c), app_code("web"), dtype=torch.long)
    rows = torch.tensor([app_row("web")] * (k * c), dtype=torch.float32).view(k, c, 5)
    cent = torch.zeros(k, c, e)
    is_vm = torch.zeros(k, e, dtype=torch.bool)
    vcpus = torch.ones(k, e)
    mem = torch.ones(k, e)
    for i, s in enumerate(specs):
        for j, tc in enumerate(s.classes):
            valid[i, j] = True
            mbps[i, j] = tc.mbps
            flows[i, j] = tc.flows
            app[i, j] = app_code(tc.app)
            rows[i, j] = torch.tensor(app_row(tc.app))
            cent[i, j, s.entity_index(tc.entity)] = 1.0
        for j, ent in enumerate(s.entities):
            is_vm[i, j] = ent.kind == "vm"
            vcpus[i, j] = max(ent.vcpus, 1)
            mem[i, j] = max(ent.memory_gib, 0.1)
    pkt_kbit = rows[..., 0] * 8.0 / 1000.0
    apps = AppParams(
        app=app.to(dev),
        pkt_kbit=pkt_kbit.to(dev),
        size_cs2=rows[..., 1].to(dev),
        deadline_ms=rows[..., 2].to(dev),
        cpu_per_mbps=rows[..., 3].to(dev),
        mem_per_flow_gib=rows[..., 4].to(dev),
    )
    # A class's own latency SLA, where set, is its deadline for the application metric.
    qos = qos_tensors(specs, c, dev)
    apps = apps._replace(deadline_ms=torch.where(torch.isfinite(qos.max_p99_ms), qos.max_p99_ms, apps.deadline_ms))
    path_mbps = torch.tensor([x.capacity_mbps for x in cfg.paths], dtype=torch.float32)
    buffer_ms = torch.tensor([x.buffer_ms for x in cfg.paths], dtype=torch.float32)
    af = torch.tensor([list(x.af_weights) for x in cfg.paths], dtype=torch.float32)
    if af.shape != (p, 3) or (af <= 0).any():
        raise ValueError("every path needs three positive af_weights (AF-high, AF-low, best effort)")
    if (path_mbps <= 0).any():
        raise ValueError("every path needs capacity_mbps > 0")
    return ScenarioTensors(
        specs=specs,
        n_tenants=k,
        n_classes=c,
        n_entities=e,
        n_paths=p,
        class_valid=valid.to(dev),
        mbps=mbps.to(dev),
        flows=flows.to(dev),
        apps=apps,
        class_entity=cent.to(dev),
        entity_is_vm=is_vm.to(dev),
        vcpus=vcpus.to(dev),
        memory_gib=mem.to(dev),
        cap_mbps=torch.tensor([s.cap_mbps for s in specs], dtype=torch.float32, device=dev),
        path_mbps=path_mbps.to(dev),
        path_delay_ms=torch.tensor([x.base_delay_ms for x in cfg.paths], dtype=torch.float32, device=dev),
        path_buffer_kbit=(path_mbps * buffer_ms).to(dev),
        ef_cap=torch.tensor([x.ef_cap for x in cfg.paths], dtype=torch.float32, device=dev),
        af_weights=af.to(dev),
        dscp_queue=dscp_queue_table().to(dev),
        qos=qos,
        levels=ActionLayout(specs[0]).levels(dev),
        leaf_limit_kbit=(LEAF_LIMIT_PACKETS * pkt_kbit).to(dev),
    )
