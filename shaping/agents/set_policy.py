"""A structure-aware actor-critic: attention over class, path and tenant tokens, for any number of each.

SetActorCritic reads a tenant as tokens (shaping.agents.set_tokens): a shared MLP encodes every class
token, another every path token, a third the tenant token; a few pre-norm self-attention layers mix them
(no positional encoding, so the model is equivariant to the order of classes and of paths). Heads:

- per class and per field (dscp, rate, ceil, priority, drop): the logit of each of the scenario's levels
  is ``query(class) . key(level)``, a level's key an MLP of the level's value (its DSCP bits, its share of
  the cap, ...), so any number of levels, and levels the model never saw, get logits;
- per class, the path: ``query(class) . key(path) / sqrt(d)``, plus a learned bias for the path the class
  is on now;
- the root rate: ``query(tenant) . key(level)`` over the root levels;
- the value: an MLP of the tenant token and the mean class and path tokens.

A TenantBinding lays these outputs out as the tenant's flat MultiDiscrete action (ActionLayout order,
padded (D, max choices) as ActorCritic's logits) and applies the tenant's envelope, and BoundSetPolicy is
the model bound to one tenant with ActorCritic's interface, so collect_rollout, ppo_update and the
evaluation drive it as they drive ActorCritic. One SetActorCritic can be bound to many tenants at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shaping.agents.envelope import Envelope, build_envelope, mask_logits
from shaping.agents.ppo import _gumbel_argmax
from shaping.agents.set_tokens import CLASS_DIM, PATH_DIM, TENANT_DIM, TenantStructure
from shaping.spec import ACTION_FIELDS, ActionLayout, TenantSpec
from shaping.spec.observation import LAYOUT_VERSION

#: Version of the saved file (bump when the architecture, the token features or the level features change).
SET_POLICY_FORMAT = 1
#: The per-class fields scored against levels (the path is scored against path tokens).
LEVEL_FIELDS: tuple[str, ...] = ("dscp", "rate", "ceil", "priority", "drop")
#: Size of each field's level features (root: the root rate's levels).
LEVEL_DIMS: dict[str, int] = {"dscp": 6, "rate": 1, "ceil": 1, "priority": 1, "drop": 1, "root": 1}
#: HTB priorities run 0..7; priority levels are scaled by this so a level means the same in every scenario.
MAX_PRIORITY = 7


@dataclass
class SetPolicyConfig:
    """Sizes of a SetActorCritic (not frozen: it is also the ``model`` schema of experiments.train_set)."""

    d_model: int = 64
    """Width of every token."""
    n_layers: int = 2
    """Self-attention layers."""
    n_heads: int = 4
    """Attention heads (d_model must be a multiple)."""
    d_ff: int = 128
    """Hidden width of each layer's feed-forward block."""
    d_key: int = 32
    """Width of the queries and keys that score levels and paths."""

    def __post_init__(self) -> None:
        small = [f"{k}={v}" for k, v in asdict(self).items() if not v >= 1]
        if small:
            raise ValueError(f"model sizes must be >= 1, got {', '.join(small)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")


def level_features(spec: TenantSpec) -> dict[str, torch.Tensor]:
    """(levels, LEVEL_DIMS[field]) float32 features of each choice of each level field and of the root rate."""
    bits = [[float((d >> b) & 1) for b in range(6)] for d in spec.dscp_set]

    def col(values: Any) -> torch.Tensor:
        return torch.tensor([[float(v)] for v in values], dtype=torch.float32)

    return {
        "dscp": torch.tensor(bits, dtype=torch.float32),
        "rate": col(spec.rate_levels),
        "ceil": col(spec.ceil_levels),
        "priority": col([p / MAX_PRIORITY for p in range(spec.priority_levels)]),
        "drop": col(spec.drop_levels),
        "root": col(spec.root_levels),
    }


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.Tanh(), nn.Linear(n_hidden, n_out))


class AttentionLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + MHA(LN(x)), then x + FFN(LN(x)) with ReLU. Hand-built so that
    the numpy inference (shaping.agents.set_numpy) mirrors it operator for operator."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, d) tokens in, (..., N, d) out."""
        *lead, n, d = x.shape
        h = self.n_heads
        qkv = self.qkv(self.norm1(x)).reshape(*lead, n, 3, h, d // h)
        q, k, v = (t.transpose(-2, -3) for t in qkv.unbind(-3))  # each (..., h, N, dh)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), -1)  # (..., h, N, N)
        x = x + self.out((att @ v).transpose(-2, -3).reshape(*lead, n, d))
        return x + self.ff2(torch.relu(self.ff1(self.norm2(x))))


class SetActorCritic(nn.Module):
    """Encoders, attention and heads over tokens; see the module docstring. Bind it to a tenant to act."""

    kind = "set"

    def __init__(self, config: SetPolicyConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SetPolicyConfig()
        d, k = cfg.d_model, cfg.d_key
        self.class_encoder = _mlp(CLASS_DIM, d, d)
        self.path_encoder = _mlp(PATH_DIM, d, d)
        self.tenant_encoder = _mlp(TENANT_DIM, d, d)
        self.layers = nn.ModuleList(AttentionLayer(d, cfg.n_heads, cfg.d_ff) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        # One query per class for every level field, one for its path, and the root query of the tenant token.
        self.class_query = nn.Linear(d, k * (len(LEVEL_FIELDS) + 1))
        self.path_key = nn.Linear(d, k)
        self.stay = nn.Parameter(torch.zeros(()))
        self.root_query = nn.Linear(d, k)
        # A level's key, with one more column: the level's own bias.
        self.level_keys = nn.ModuleDict({f: _mlp(n, k, k + 1) for f, n in LEVEL_DIMS.items()})
        self.value_head = _mlp(3 * d, d, 1)
        with torch.no_grad():  # small initial logits (a near-uniform policy), as CleanRL's 0.01 actor layer
            self.class_query.weight.mul_(0.1)
            self.root_query.weight.mul_(0.1)
            self.path_key.weight.mul_(0.1)

    def encode(self, cls_tok: torch.Tensor, path_tok: torch.Tensor, ten_tok: torch.Tensor) -> torch.Tensor:
        """(..., 1 + C + P, d) tokens after the attention layers: the tenant, the classes, the paths."""
        x = torch.cat(
            [self.tenant_encoder(ten_tok).unsqueeze(-2), self.class_encoder(cls_tok), self.path_encoder(path_tok)], -2
        )
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def heads(
        self, x: torch.Tensor, n_classes: int, on_path: torch.Tensor, levels: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Unmasked logits from encoded tokens.

        Returns:
            per ACTION_FIELDS field, the classes' logits (..., C, choices); the root's (..., root levels);
            the value (...,).
        """
        k = self.config.d_key
        ten, cls, paths = x[..., 0, :], x[..., 1 : 1 + n_classes, :], x[..., 1 + n_classes :, :]
        queries = self.class_query(cls)  # (..., C, k * (fields + 1))
        out: list[torch.Tensor] = []
        for i, f in enumerate(LEVEL_FIELDS):
            key = self.level_keys[f](levels[f])  # (L, k + 1)
            out.append(queries[..., i * k : (i + 1) * k] @ key[:, :k].T + key[:, k])
        q_path = queries[..., len(LEVEL_FIELDS) * k :]
        path_logits = q_path @ self.path_key(paths).transpose(-1, -2) / math.sqrt(k) + self.stay * on_path
        out.insert(ACTION_FIELDS.index("path"), path_logits)
        root_key = self.level_keys["root"](levels["root"])
        root = self.root_query(ten) @ root_key[:, :k].T + root_key[:, k]
        value = self.value_head(torch.cat([ten, cls.mean(-2), paths.mean(-2)], -1)).squeeze(-1)
        return out, root, value


class TenantBinding:
    """What binds the set policy to one tenant: its token structure, level features and envelope, and the map
    between per-class outputs and the tenant's flat MultiDiscrete action (ActionLayout order).

    Args:
        spec: the tenant.
        envelope: its safety envelope (default build_envelope(spec)).
    """

    def __init__(self, spec: TenantSpec, envelope: Envelope | None = None) -> None:
        self.spec = spec
        self.structure = TenantStructure.of(spec)
        self.levels = level_features(spec)
        self.nvec = tuple(int(n) for n in ActionLayout(spec).nvec)
        self.envelope = envelope or build_envelope(spec)
        if self.envelope.nvec != self.nvec:
            raise ValueError(f"envelope for action sizes {list(self.envelope.nvec)}, tenant has {list(self.nvec)}")
        self.width = max(self.nvec)
        self.allowed = self.envelope.padded()  # (D, width)

    @property
    def n_classes(self) -> int:
        """Classes of the tenant."""
        return self.structure.n_classes

    def padded(self, per_class: list[torch.Tensor], root: torch.Tensor) -> torch.Tensor:
        """(..., D, width) masked logits in the flat action's order from per-field (..., C, choices) and root
        (..., root levels) logits: class c's field f is dimension c * len(ACTION_FIELDS) + f, the root last."""
        pad = [nn.functional.pad(x, (0, self.width - x.shape[-1]), value=float("-inf")) for x in per_class]
        fields = torch.stack(pad, -2).flatten(-3, -2)  # (..., C * fields, width)
        root = nn.functional.pad(root, (0, self.width - root.shape[-1]), value=float("-inf")).unsqueeze(-2)
        return mask_logits(torch.cat([fields, root], -2), self.allowed.to(root.device))

    def per_class(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split flat actions (..., D) into per-class choices (..., C, len(ACTION_FIELDS)) and the root (...,)."""
        return action[..., :-1].unflatten(-1, (self.n_classes, len(ACTION_FIELDS))), action[..., -1]

    def flat(self, per_class: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
        """Flat actions (..., D) from per-class choices (..., C, len(ACTION_FIELDS)) and the root (...,)."""
        return torch.cat([per_class.flatten(-2), root.unsqueeze(-1)], -1)


class _NoNorm(nn.Module):
    """The set policy's observations are already normalized by ObservationLayout's fixed scales; collect_rollout
    calls ``obs_norm`` and ``obs_norm.update`` on any agent, so this stands in for RunningNorm. Its empty
    ``mean`` and ``var`` are there for code that watches a normalizer's statistics (ModelPolicy); they never
    change."""

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(0), persistent=False)
        self.register_buffer("var", torch.ones(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def update(self, x: torch.Tensor) -> None:
        """No statistics to keep."""


class BoundSetPolicy(nn.Module):
    """A SetActorCritic bound to one tenant, with ActorCritic's interface (obs_dim, nvec, obs_norm,
    masked_logits, get_action_and_value, get_value, act, set_envelope) over the tenant's flat observation
    and action: the control loop's ModelPolicy runs it as it runs ActorCritic (in numpy, SetNumpyActor).

    Its parameters are the shared model's: an optimizer over them trains the model every binding shares.
    """

    kind = "set"

    def __init__(self, model: SetActorCritic, binding: TenantBinding) -> None:
        super().__init__()
        self.model = model
        self.binding = binding
        self.obs_dim = binding.structure.obs_dim
        self.nvec = binding.nvec
        self.obs_norm = _NoNorm()
        self._allowed = binding.allowed
        self.envelope: Envelope = binding.envelope

    def set_envelope(self, envelope: Envelope | None) -> None:
        """Restrict the policy to an envelope's choices (None: the tenant's build_envelope), as on ActorCritic."""
        self.binding = TenantBinding(self.binding.spec, envelope)
        self._allowed = self.binding.allowed
        self.envelope = self.binding.envelope

    def forward_heads(self, nobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D, width) masked logits and (...,) values of observations (..., obs_dim)."""
        b = self.binding
        cls_tok, path_tok, ten_tok, on_path = b.structure.tokens(nobs)
        x = self.model.encode(cls_tok, path_tok, ten_tok)
        levels = {f: t.to(x.device) for f, t in b.levels.items()}
        per_class, root, value = self.model.heads(x, b.n_classes, on_path, levels)
        return b.padded(per_class, root), value

    def masked_logits(self, nobs: torch.Tensor) -> torch.Tensor:
        """(..., D, width) logits, -inf outside the envelope and padding."""
        return self.forward_heads(nobs)[0]

    def get_value(self, nobs: torch.Tensor) -> torch.Tensor:
        """(...,) state values."""
        return self.forward_heads(nobs)[1]

    def get_action_and_value(
        self, nobs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ActorCritic.get_action_and_value: action (..., D), log-probability, entropy and value (...,)."""
        logits, value = self.forward_heads(nobs)
        allowed = self._allowed.to(logits.device)
        logp_all = torch.log_softmax(logits, -1)
        if action is None:
            action = _gumbel_argmax(logits)
        logprob = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1)
        safe = torch.where(allowed, logp_all, torch.zeros_like(logp_all))
        entropy = -(safe.exp() * safe).sum((-2, -1))
        return action, logprob, entropy, value

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(..., D) greedy (or sampled) flat actions of observations (..., obs_dim)."""
        logits = self.masked_logits(obs)
        return logits.argmax(-1) if deterministic else _gumbel_argmax(logits)


def bind(model: SetActorCritic, spec: TenantSpec, envelope: Envelope | None = None) -> BoundSetPolicy:
    """The model bound to a tenant (its envelope by default from build_envelope)."""
    return BoundSetPolicy(model, TenantBinding(spec, envelope))


class SetPolicyFormatError(ValueError):
    """A file that is not a set policy of this format and observation layout."""


def save_set_policy(path: str | os.PathLike[str], model: SetActorCritic, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's weights with its sizes, SET_POLICY_FORMAT and the observation LAYOUT_VERSION."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "set_policy",
        "format_version": SET_POLICY_FORMAT,
        "layout_version": LAYOUT_VERSION,
        "config": asdict(model.config),
        "state_dict": model.state_dict(),
        "extra": dict(extra or {}),
    }
    torch.save(payload, out)
    return out


def load_set_policy(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> SetActorCritic:
    """Read a file of save_set_policy.

    Raises:
        SetPolicyFormatError: not a set policy, or of another format or observation layout version.
    """
    payload = torch.load(Path(path), map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "set_policy":
        raise SetPolicyFormatError(f"{os.fspath(path)!r} is not a set policy file")
    got = (payload.get("format_version"), payload.get("layout_version"))
    if got != (SET_POLICY_FORMAT, LAYOUT_VERSION):
        raise SetPolicyFormatError(
            f"{os.fspath(path)!r} is set policy format {got[0]} for observation layout {got[1]}; "
            f"this code reads format {SET_POLICY_FORMAT}, layout {LAYOUT_VERSION}"
        )
    model = SetActorCritic(SetPolicyConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
