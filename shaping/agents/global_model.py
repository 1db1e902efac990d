"""The federation's global model: its construction and its weights on the wire.

Weights on the wire are the ActorCritic's state_dict in order, with the observation normalizer sent as
(mean, std): bounded values that SecAgg+'s fixed-point quantization and the clipping of updates handle;
the normalizer's sample count stays local (it only sets how fast local statistics move). The Flower
client, the server (initial weights, checkpoints) and the reference arms all use these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from shaping.agents.checkpoint import CheckpointMismatchError
from shaping.agents.ppo import ActorCritic
from shaping.agents.universal import UniversalLayout
from shaping.spec import LAYOUT_VERSION

#: The .npz entry holding the observation layout version the weights were trained for (save_weights'
#: keyword); files without it predate the versioning and are layout version 1.
VERSION_KEY = "layout_version"
#: state_dict keys that never travel: the normalizer's count is local.
LOCAL_KEYS = ("obs_norm.count",)
#: The normalizer's statistics, which stay local too with ``local_normalizer`` (FedBN-style).
NORMALIZER_KEYS = ("obs_norm.mean", "obs_norm.var")


def _wire_keys(model: ActorCritic, local_normalizer: bool) -> list[str]:
    local = LOCAL_KEYS + NORMALIZER_KEYS if local_normalizer else LOCAL_KEYS
    return [k for k in model.state_dict() if k not in local]


def make_model(layout: UniversalLayout, hidden_sizes: Sequence[int] = (64, 64), seed: int = 0) -> ActorCritic:
    """The global model's architecture, seeded so every party builds the same initial weights."""
    torch.manual_seed(seed)
    return ActorCritic(layout.obs_dim, layout.nvec, hidden_sizes)


def initial_model(layout: UniversalLayout, hidden_sizes: Sequence[int] = (64, 64), seed: int = 0,
                  weights_file: str | Path = "", norm_count: float = 0.0) -> ActorCritic:
    """The model every arm of a run starts from: seeded fresh weights, or those of ``weights_file``.

    Args:
        layout, hidden_sizes, seed: the architecture and seed of make_model.
        weights_file: a file written by save_weights (a universal pretraining's output, or any round
            checkpoint of a federated run); "" starts from the seeded initialization.
        norm_count: with weights_file, the sample count the file's normalizer statistics stand for
            (see init_norm_count); 0 keeps make_model's near-zero prior.
    Raises:
        ValueError: the file's weights do not fit this layout and architecture (the message names it).
    """
    model = make_model(layout, hidden_sizes, seed)
    if weights_file:
        try:
            set_weights(model, load_weights(weights_file))
        except ValueError as err:
            raise ValueError(f"initial weights {weights_file} do not fit the run's layout and hidden sizes "
                             f"{list(hidden_sizes)}: {err}") from err  # fmt: skip
        if norm_count > 0:
            model.obs_norm.count.fill_(norm_count)
    return model


def save_weights(path: str | Path, weights: Sequence[np.ndarray]) -> Path:
    """Write weights (as get_weights returns them) and the observation layout version to an .npz file;
    returns its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("wb") as f:  # a file object: np.savez would otherwise append .npz to other suffixes
        np.savez(f, *weights, layout_version=np.array(LAYOUT_VERSION))
    return p


def load_weights(path: str | Path) -> list[np.ndarray]:
    """The weights of a file written by save_weights.

    Raises:
        CheckpointMismatchError: the file was written for another observation layout version (one line).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no weights file {p}")
    with np.load(p) as npz:
        version = int(npz[VERSION_KEY]) if VERSION_KEY in npz.files else 1
        if version != LAYOUT_VERSION:
            raise CheckpointMismatchError(f"weights file {p} has observation layout version {version}, this "
                                          f"FedShape reads version {LAYOUT_VERSION}: retrain the model")  # fmt: skip
        return [npz[f"arr_{i}"] for i in range(sum(name.startswith("arr_") for name in npz.files))]


def get_weights(model: ActorCritic, local_normalizer: bool = False) -> list[np.ndarray]:
    """The model's weights as the federation sends them (normalizer variance as std, count left out).

    Args:
        local_normalizer: leave the normalizer's statistics out too: they are the tenant's traffic
            statistics, and under DP the noise on a near-constant feature's tiny std would blow up that
            input; each party then keeps its own (the run's initial weights, then its local updates).
    """
    out = []
    keys = _wire_keys(model, local_normalizer)
    for key, value in model.state_dict().items():
        if key not in keys:
            continue
        arr = value.detach().cpu().double() if key == "obs_norm.var" else value.detach().cpu()
        out.append((arr.sqrt() if key == "obs_norm.var" else arr).numpy().astype(np.float32))
    return out


def set_weights(model: ActorCritic, weights: Sequence[np.ndarray], local_normalizer: bool = False) -> None:
    """Load weights produced by get_weights with the same local_normalizer (what is local is kept)."""
    state = model.state_dict()
    keys = _wire_keys(model, local_normalizer)
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
