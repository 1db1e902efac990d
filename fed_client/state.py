"""A tenant's own round-to-round state, mirrored to a file on the tenant's side.

What a tenant carries from one round to the next stays with it: the normalizer's sample count, with
``fl.local_normalizer`` its statistics, and the DP-SGD accountant's history. Flower keeps it in the
node's context, which lives as long as the SuperNode (or the simulation run). Mirrored to a file, it
survives a restarted SuperNode or a resumed run: losing the accountant's history would under-report
the privacy the tenant has spent, and losing the count would make the resumed run differ from the
uninterrupted one. The file is the tenant's, never sent: in deployment it lies on the tenant's host
(node config ``state-file``); a simulation keeps one per tenant under its output directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_state(path: str | Path) -> dict[str, Any]:
    """The state saved at path; empty when there is no file yet."""
    p = Path(path)
    if not p.exists():
        return {}
    state = json.loads(p.read_text())
    if not isinstance(state, dict):
        raise ValueError(f"{p}: a tenant state file holds a JSON object, not {type(state).__name__}")
    return state


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the state atomically (a crash mid-write leaves the previous file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, p)
