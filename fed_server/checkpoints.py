"""Global model checkpoints, one per round, and resuming a run from the latest.

A checkpoint is ``round_NNNN.npz`` (the weight arrays as the federation sends them, see
shaping.agents.global_model.get_weights) plus ``latest.json`` naming it, with the round and the history of
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


def save_global(directory: str | Path, ckpt: GlobalCheckpoint) -> Path:
    """Write the round's weights and point latest.json at them; returns the .npz path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = save_weights(d / f"round_{ckpt.round:04d}.npz", ckpt.weights)
    tmp = d / "latest.json.tmp"
    tmp.write_text(json.dumps({"round": ckpt.round, "weights": path.name, "history": ckpt.history}))
    os.replace(tmp, d / "latest.json")
    return path


def load_latest(directory: str | Path) -> GlobalCheckpoint | None:
    """The latest checkpoint in directory, or None when there is none."""
    d = Path(directory)
    meta_path = d / "latest.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    weights = load_weights(d / meta["weights"])
    return GlobalCheckpoint(round=int(meta["round"]), weights=weights, history=list(meta.get("history", [])))
