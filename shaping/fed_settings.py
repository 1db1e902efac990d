"""The flat run-config keys both Flower apps read (``section.key -> scalar``), typed, with their defaults.

experiments.federated builds them from the Hydra config with experiments.config.flat_config; a
deployment passes them with ``flwr run --run-config``. Flower 1.42 refuses run-config keys the app does
not declare, so pyproject's ``[tool.flwr.app.config]`` declares every key of KEYS with its default
(tests/fed/test_settings.py keeps the two equal). Keys a run leaves out take the defaults, so the apps
never need Hydra.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shaping.agents.ppo import linear_lr
from shaping.agents.universal import TenantTask, UniversalLayout
from shaping.checks import Bound, check_privacy
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
    rounds: int = 4
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    min_available_clients: int = 0
    proximal_mu: float = 0.0
    server_lr: float = 1e-2
    server_momentum: float = 0.0
    client_lr: float = 1e-2
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-9
    trim_beta: float = 0.2
    krum_malicious: int = 1
    privacy_mode: str = "none"
    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0
    clip_to_median: bool = False
    delta: float = 1e-5
    target_epsilon: float | None = None
    secure_aggregation: bool = False
    dpsgd_noise: float = 0.0
    dpsgd_max_grad_norm: float = 1.0
    local_iterations: int = 2
    anneal_lr: bool = False
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(num_steps=32, learning_rate=3e-4))
    hidden_sizes: tuple[int, ...] = (64, 64)
    eval_envs: int = 8
    eval_steps: int = 20
    eval_seed: int = 1000
    seed: int = 0
    tenants: tuple[TenantTask, ...] = DEFAULT_TENANTS
    layout: UniversalLayout = field(default_factory=UniversalLayout)
    local_normalizer: bool = False
    weighting: str = "examples"
    init_weights: str = ""
    init_norm_count: float = 1e5
    checkpoint_dir: str = ""
    client_state_dir: str = ""
    resume: bool = False
    results_file: str = ""
    attack_scale: float = 1.0
    attack_tenants: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # The Flower apps also take run configs that never went through the Hydra schema (flwr run
        # --run-config): the same privacy ranges hold here, so central DP without noise cannot start.
        check_privacy(self.privacy_mode, self.noise_multiplier, self.clipping_norm, self.delta, self.target_epsilon,
                      self.dpsgd_noise, self.dpsgd_max_grad_norm)  # fmt: skip
        # The same holds for the other ranges: fl.rounds=0 or evaluation.envs=0 is refused here, before a
        # round starts, with the run-config key named, instead of failing (or hanging) inside a round.
        for key, bound in BOUNDS.items():
            attr = KEYS[key][0]
            bound.check(key, getattr(self.ppo, attr[4:]) if attr.startswith("ppo.") else getattr(self, attr))
        if self.weighting not in ("examples", "uniform"):
            raise ValueError(f"fl.weighting must be examples or uniform, got {self.weighting!r}")
        for size in self.hidden_sizes:
            Bound(1).check("train.hidden_sizes entry", size)
        for index in self.attack_tenants:
            Bound(0).check("attack.tenants entry", index)
        if not self.hidden_sizes:
            raise ValueError("train.hidden_sizes must list at least one layer, got []")
        for task in self.tenants:
            Bound(1).check(f"tenants: {task.name}'s num_envs", task.num_envs)

    @property
    def client_level_dp(self) -> bool:
        """Whether the run adds client-level DP noise (central, or distributed shares), which the server accounts."""
        return self.privacy_mode in ("central", "distributed")

    @property
    def server_clips(self) -> bool:
        """Whether the server clips each update itself: clip or central mode without SecAgg+.

        A tenant's own clipping (fixedclipping_mod) binds only a tenant that runs the project's client; a
        malicious one skips it. Where the server sees the individual updates it clips them, so nobody can
        skip the bound. Under SecAgg+ it sees only their sum, and the clients clip.
        """
        return self.privacy_mode in ("clip", "central") and not self.secure_aggregation

    @property
    def clients_clip(self) -> bool:
        """Whether each client clips its own update (every privacy mode the server cannot clip for)."""
        return self.privacy_mode != "none" and not self.server_clips

    @property
    def dpsgd_steps_per_round(self) -> int:
        """DP-SGD steps a tenant takes in one round at most, each at sampling rate 1 / num_minibatches.

        Simulated training takes exactly this many (every Poisson sample steps, and DP-SGD refuses
        ppo.target_kl); training on recorded experience takes one PPO update, update_epochs x
        num_minibatches. The budget counts the most, so it never underestimates the epsilon spent.
        """
        return max(self.local_iterations, 1) * self.ppo.update_epochs * self.ppo.num_minibatches

    def round_ppo(self, rnd: int) -> PPOConfig:
        """PPO settings of round rnd (1-based): with anneal_lr the learning rate decays linearly over the
        rounds as CleanRL's does over iterations (round 1 at the full rate, the last at 1 / rounds of it).
        Every arm calls this, so the federation, local-only and centralized training share the schedule;
        rnd <= 0 (a round the server did not number) keeps the full rate."""
        if not self.anneal_lr or rnd <= 0:
            return self.ppo
        rounds = max(self.rounds, 1)
        return replace(self.ppo, learning_rate=linear_lr(self.ppo.learning_rate, min(rnd, rounds), rounds))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RunSettings:
        """Read the flat keys (unknown keys are ignored, missing ones take the defaults)."""
        top: dict[str, Any] = {}
        ppo: dict[str, Any] = {}
        for key, (attr, decode, _) in KEYS.items():
            if key not in cfg:
                continue
            value = decode(cfg[key])
            if attr.startswith("ppo."):
                ppo[attr[4:]] = value
            else:
                top[attr] = value
        s = replace(cls(), **top)  # all at once: __post_init__ checks the settings together, not key by key
        if not ppo:
            return s
        try:
            return replace(s, ppo=replace(s.ppo, **ppo))
        except ValueError as err:
            # PPOConfig names its fields as the Hydra schema does (agent.num_steps); a run config says train.*.
            text = str(err)
            for key, (attr, _, _) in KEYS.items():
                if attr.startswith("ppo."):
                    text = text.replace(f"agent.{attr[4:]} ", f"{key} ")
            raise ValueError(text) from None

    def to_config(self) -> dict[str, Scalar]:
        """The flat keys of these settings (every key of KEYS); from_config(to_config()) gives them back."""
        out = {}
        for key, (attr, _, encode) in KEYS.items():
            value = getattr(self.ppo, attr[4:]) if attr.startswith("ppo.") else getattr(self, attr)
            out[key] = encode(value)
        return out


def _as(kind: type) -> Callable[[Any], Any]:
    """Decoder of a scalar that may arrive as a string (``flwr run --run-config`` values, env files)."""

    def decode(value: Any) -> Any:
        if kind is bool and isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes")
        return kind(value)

    return decode


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _opt_float(value: Any) -> float | None:
    value = _json(value)
    return None if value is None else float(value)


def _tenants(value: Any) -> tuple[TenantTask, ...]:
    return tuple(TenantTask(**t) for t in _json(value))


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in _json(value))


def _same(value: Any) -> Any:
    return value


def _dump(value: Any) -> str:
    return json.dumps(value)


def _dump_tenants(value: tuple[TenantTask, ...]) -> str:
    return json.dumps([{"scenario": t.scenario, "tenant": t.tenant, "num_envs": t.num_envs} for t in value])


def _dump_ints(value: tuple[int, ...]) -> str:
    return json.dumps(list(value))


_F, _I, _S, _B = _as(float), _as(int), _as(str), _as(bool)

#: flat key -> (RunSettings attribute, or ``ppo.<field>`` of its PPOConfig; decoder; encoder to a scalar).
KEYS: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Scalar]]] = {
    "seed": ("seed", _I, _same),
    "tenants": ("tenants", _tenants, _dump_tenants),
    "fl.strategy": ("strategy", _S, _same),
    "fl.rounds": ("rounds", _I, _same),
    "fl.fraction_fit": ("fraction_fit", _F, _same),
    "fl.min_fit_clients": ("min_fit_clients", _I, _same),
    "fl.min_available_clients": ("min_available_clients", _I, _same),
    "fl.proximal_mu": ("proximal_mu", _F, _same),
    "fl.server_lr": ("server_lr", _F, _same),
    "fl.server_momentum": ("server_momentum", _F, _same),
    "fl.client_lr": ("client_lr", _F, _same),
    "fl.beta_1": ("beta_1", _F, _same),
    "fl.beta_2": ("beta_2", _F, _same),
    "fl.tau": ("tau", _F, _same),
    "fl.trim_beta": ("trim_beta", _F, _same),
    "fl.krum_malicious": ("krum_malicious", _I, _same),
    "privacy.mode": ("privacy_mode", _S, _same),
    "privacy.noise_multiplier": ("noise_multiplier", _F, _same),
    "privacy.clipping_norm": ("clipping_norm", _F, _same),
    "privacy.clip_to_median": ("clip_to_median", _B, _same),
    "privacy.delta": ("delta", _F, _same),
    # TOML has no null: "null" (a JSON string) means no target.
    "privacy.target_epsilon": ("target_epsilon", _opt_float, _dump),
    "privacy.secure_aggregation": ("secure_aggregation", _B, _same),
    "privacy.dpsgd_noise_multiplier": ("dpsgd_noise", _F, _same),
    "privacy.dpsgd_max_grad_norm": ("dpsgd_max_grad_norm", _F, _same),
    "train.local_iterations": ("local_iterations", _I, _same),
    "train.num_steps": ("ppo.num_steps", _I, _same),
    "train.learning_rate": ("ppo.learning_rate", _F, _same),
    "train.anneal_lr": ("anneal_lr", _B, _same),
    "train.update_epochs": ("ppo.update_epochs", _I, _same),
    "train.num_minibatches": ("ppo.num_minibatches", _I, _same),
    "train.hidden_sizes": ("hidden_sizes", _ints, _dump_ints),
    "evaluation.envs": ("eval_envs", _I, _same),
    "evaluation.steps": ("eval_steps", _I, _same),
    "evaluation.seed": ("eval_seed", _I, _same),
    "fl.local_normalizer": ("local_normalizer", _B, _same),
    "fl.weighting": ("weighting", _S, _same),
    "init.weights": ("init_weights", _S, _same),
    "init.norm_count": ("init_norm_count", _F, _same),
    "output.checkpoint_dir": ("checkpoint_dir", _S, _same),
    "output.client_state_dir": ("client_state_dir", _S, _same),
    "output.resume": ("resume", _B, _same),
    "output.results_file": ("results_file", _S, _same),
    "attack.scale": ("attack_scale", _F, _same),
    "attack.tenants": ("attack_tenants", _ints, _dump_ints),
}

#: Ranges of the numeric keys, checked by RunSettings (the Hydra schema of experiments.config checks the same
#: values under its own names; the PPO keys are PPOConfig's, which checks itself).
BOUNDS: dict[str, Bound] = {
    "seed": Bound(0),
    "fl.rounds": Bound(1),
    "fl.fraction_fit": Bound(0.0, 1.0, lo_open=True),
    "fl.min_fit_clients": Bound(1),
    "fl.min_available_clients": Bound(0),
    "fl.proximal_mu": Bound(0.0),
    "fl.server_lr": Bound(0.0, lo_open=True),
    "fl.server_momentum": Bound(0.0, 1.0),
    "fl.client_lr": Bound(0.0, lo_open=True),
    "fl.beta_1": Bound(0.0, 1.0),
    "fl.beta_2": Bound(0.0, 1.0),
    "fl.tau": Bound(0.0, lo_open=True),
    "fl.trim_beta": Bound(0.0, 0.5, hi_open=True),
    "fl.krum_malicious": Bound(0),
    "train.local_iterations": Bound(1),
    "evaluation.envs": Bound(1),
    "evaluation.steps": Bound(0),
    "evaluation.seed": Bound(0),
    "init.norm_count": Bound(0.0),
}
