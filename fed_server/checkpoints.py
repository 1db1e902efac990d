"""Global model checkpoints, one per round, and resuming a run from the latest.

A checkpoint is ``round_NNNN.npz`` (the weight arrays as the federation sends them, see
shaping.agents.global_model.get_weights), ``round_NNNN_server.npz`` when the server optimizer keeps
state (fed_server.server_state), plus ``latest.json`` naming them, with the round and the history of
per-round records so far; latest.json is written last (atomically), so a crash mid-save leaves the
previous checkpoint valid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shaping.agents.global_model import load_weights, save_weights


@dataclass
class GlobalCheckpoint:
    """A saved global model."""

    round: int
    """Rounds completed when it was saved."""
    weights: list[np.ndarray]
    """The global weight arrays."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The per-round records of the run up to this round."""
    server_state: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """The server optimizer's state by name (FedAvgM's momentum, FedAdam's moments; empty for FedAvg)."""


def _weights_name(ckpt: GlobalCheckpoint) -> str:
    return f"round_{ckpt.round:04d}.npz"


def _server_name(ckpt: GlobalCheckpoint) -> str:
    return f"round_{ckpt.round:04d}_server.npz"


def save_global(directory: str | Path, ckpt: GlobalCheckpoint) -> Path:
    """Write the round's weights (and server state) and point latest.json at them; returns the .npz path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = save_weights(d / _weights_name(ckpt), ckpt.weights)
    if ckpt.server_state:
        arrays: dict[str, Any] = {f"{name}.{i}": a for name, values in ckpt.server_state.items()
                                  for i, a in enumerate(values)}  # fmt: skip
        np.savez(d / _server_name(ckpt), **arrays)
    write_latest(d, ckpt)
    return path


def write_latest(directory: str | Path, ckpt: GlobalCheckpoint) -> None:
    """Point latest.json at the round's saved arrays, with ckpt.history (atomically).

    save_global calls it; on its own it updates the history of a round whose arrays are already saved.
    """
    d = Path(directory)
    meta: dict[str, Any] = {"round": ckpt.round, "weights": _weights_name(ckpt), "history": ckpt.history}
    if ckpt.server_state:
        meta["server_state"] = _server_name(ckpt)
    tmp = d / "latest.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, d / "latest.json")


def load_latest(directory: str | Path) -> GlobalCheckpoint | None:
    """The latest checkpoint in directory, or None when there is none."""
    d = Path(directory)
    meta_path = d / "latest.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    weights = load_weights(d / meta["weights"])
    state: dict[str, list[np.ndarray]] = {}
    if meta.get("server_state"):
        with np.load(d / meta["server_state"]) as z:
            # Keys are "name.index"; sorted by index, not as strings (".10" before ".2").
            for key in sorted(z.files, key=lambda k: (k.rsplit(".", 1)[0], int(k.rsplit(".", 1)[1]))):
                state.setdefault(key.rsplit(".", 1)[0], []).append(z[key])
    return GlobalCheckpoint(round=int(meta["round"]), weights=weights, history=list(meta.get("history", [])),
                            server_state=state)  # fmt: skip
