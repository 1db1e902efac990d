"""The flat run-config keys both Flower apps read (``section.key -> scalar``), typed, with their defaults.

experiments.federated builds them from the Hydra config with experiments.config.flat_config; a
deployment passes them with ``flwr run --run-config`` or pyproject's ``[tool.flwr.app.config]``.
Keys a run leaves out take the defaults below, so the apps never need Hydra.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fed_client.layout import UniversalLayout
from fed_client.training import TenantTask
from shaping.config import PPOConfig

Scalar = bool | int | float | str

#: Default federation of the embedded simulation: four tenants of four scenarios, two with little data.
DEFAULT_TENANTS: tuple[TenantTask, ...] = (
    TenantTask("default", "gameco", 16),
    TenantTask("edge_gaming", "arena", 16),
    TenantTask("small_congested", "studio", 2),
    TenantTask("single_path", "office", 2),
)


@dataclass(frozen=True)
class RunSettings:
    """Everything a round needs, from the run config (see conf/federated.yaml for each key's meaning)."""

    strategy: str = "fedavg"
    rounds: int = 3
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    proximal_mu: float = 0.0
    server_lr: float = 1e-2
    client_lr: float = 1e-2
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-9
    trim_beta: float = 0.2
    krum_malicious: int = 1
    privacy_mode: str = "none"
    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    secure_aggregation: bool = False
    dpsgd_noise: float = 0.0
    dpsgd_max_grad_norm: float = 1.0
    local_iterations: int = 2
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(num_steps=32, learning_rate=3e-4))
    hidden_sizes: tuple[int, ...] = (64, 64)
    eval_envs: int = 4
    eval_steps: int = 60
    eval_seed: int = 1000
    seed: int = 0
    tenants: tuple[TenantTask, ...] = DEFAULT_TENANTS
    layout: UniversalLayout = field(default_factory=UniversalLayout)
    checkpoint_dir: str = ""
    resume: bool = False
    results_file: str = ""
    attack_scale: float = 1.0
    attack_tenants: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RunSettings:
        """Read the flat keys (unknown keys are ignored, missing ones take the defaults)."""
        d = cls()

        def get(key: str, default: Any) -> Any:
            value = cfg.get(key, default)
            if isinstance(value, str) and isinstance(default, int | float) and not isinstance(default, bool):
                return type(default)(value)
            return value

        def get_opt_float(key: str, default: float | None) -> float | None:
            value = cfg.get(key, default)
            if isinstance(value, str):
                value = json.loads(value)
            return None if value is None else float(value)

        tenants = d.tenants
        if "tenants" in cfg:
            tenants = tuple(TenantTask(**t) for t in json.loads(str(cfg["tenants"])))
        ppo = PPOConfig(
            num_steps=int(get("train.num_steps", d.ppo.num_steps)),
            learning_rate=float(get("train.learning_rate", d.ppo.learning_rate)),
            update_epochs=int(get("train.update_epochs", d.ppo.update_epochs)),
            num_minibatches=int(get("train.num_minibatches", d.ppo.num_minibatches)),
        )
        hidden = tuple(json.loads(str(cfg["train.hidden_sizes"]))) if "train.hidden_sizes" in cfg else d.hidden_sizes
        attack = tuple(json.loads(str(cfg["attack.tenants"]))) if "attack.tenants" in cfg else ()
        return cls(
            strategy=str(get("fl.strategy", d.strategy)), rounds=int(get("fl.rounds", d.rounds)),
            fraction_fit=float(get("fl.fraction_fit", d.fraction_fit)),
            min_fit_clients=int(get("fl.min_fit_clients", d.min_fit_clients)),
            proximal_mu=float(get("fl.proximal_mu", d.proximal_mu)), server_lr=float(get("fl.server_lr", d.server_lr)),
            client_lr=float(get("fl.client_lr", d.client_lr)), beta_1=float(get("fl.beta_1", d.beta_1)),
            beta_2=float(get("fl.beta_2", d.beta_2)), tau=float(get("fl.tau", d.tau)),
            trim_beta=float(get("fl.trim_beta", d.trim_beta)),
            krum_malicious=int(get("fl.krum_malicious", d.krum_malicious)),
            privacy_mode=str(get("privacy.mode", d.privacy_mode)),
            noise_multiplier=float(get("privacy.noise_multiplier", d.noise_multiplier)),
            clipping_norm=float(get("privacy.clipping_norm", d.clipping_norm)),
            delta=float(get("privacy.delta", d.delta)),
            target_epsilon=get_opt_float("privacy.target_epsilon", d.target_epsilon),
            secure_aggregation=bool(get("privacy.secure_aggregation", d.secure_aggregation)),
            dpsgd_noise=float(get("privacy.dpsgd_noise_multiplier", d.dpsgd_noise)),
            dpsgd_max_grad_norm=float(get("privacy.dpsgd_max_grad_norm", d.dpsgd_max_grad_norm)),
            local_iterations=int(get("train.local_iterations", d.local_iterations)), ppo=ppo, hidden_sizes=hidden,
            eval_envs=int(get("evaluation.envs", d.eval_envs)), eval_steps=int(get("evaluation.steps", d.eval_steps)),
            eval_seed=int(get("evaluation.seed", d.eval_seed)), seed=int(get("seed", d.seed)), tenants=tenants,
            checkpoint_dir=str(get("output.checkpoint_dir", d.checkpoint_dir)),
            resume=bool(get("output.resume", d.resume)), results_file=str(get("output.results_file", d.results_file)),
            attack_scale=float(get("attack.scale", d.attack_scale)), attack_tenants=attack,
        )  # fmt: skip
