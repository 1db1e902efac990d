"""The federation's global model: its construction and its weights on the wire.

Weights on the wire are the ActorCritic's state_dict in order, with the observation normalizer sent as
(mean, std): bounded values that SecAgg+'s fixed-point quantization and the clipping of updates handle;
the normalizer's sample count stays local (it only sets how fast local statistics move). The Flower
client, the server (initial weights, checkpoints) and the reference arms all use these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from shaping.agents.ppo import ActorCritic
from shaping.agents.universal import UniversalLayout

#: state_dict keys that never travel: the normalizer's count is local.
LOCAL_KEYS = ("obs_norm.count",)


def make_model(layout: UniversalLayout, hidden_sizes: Sequence[int] = (64, 64), seed: int = 0) -> ActorCritic:
    """The global model's architecture, seeded so every party builds the same initial weights."""
    torch.manual_seed(seed)
    return ActorCritic(layout.obs_dim, layout.nvec, hidden_sizes)


def get_weights(model: ActorCritic) -> list[np.ndarray]:
    """The model's weights as the federation sends them (normalizer variance as std, count left out)."""
    out = []
    for key, value in model.state_dict().items():
        if key in LOCAL_KEYS:
            continue
        arr = value.detach().cpu().double() if key == "obs_norm.var" else value.detach().cpu()
        out.append((arr.sqrt() if key == "obs_norm.var" else arr).numpy().astype(np.float32))
    return out


def set_weights(model: ActorCritic, weights: Sequence[np.ndarray]) -> None:
    """Load weights produced by get_weights (the local normalizer count is kept)."""
    state = model.state_dict()
    keys = [k for k in state if k not in LOCAL_KEYS]
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} weight arrays, got {len(weights)}")
    for key, arr in zip(keys, weights, strict=True):
        t = torch.as_tensor(np.asarray(arr), dtype=state[key].dtype)
        if key == "obs_norm.var":
            t = t.clamp(min=0).square()
        if t.shape != state[key].shape:
            raise ValueError(f"weight {key}: shape {tuple(t.shape)}, model has {tuple(state[key].shape)}")
        state[key] = t
    model.load_state_dict(state)
