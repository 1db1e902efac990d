"""ExperienceStore: the local, append-only record of (observation, action, log-prob, reward) the agent learns from.

On-disk format (FORMAT 1), one directory per tenant agent:

- ``meta.json``: ``{"format": 1, "spec_version", "fingerprint", "tenant", "obs_dim", "action_dim",
  "nvec", "obs_names"}``, written when the store is created; a store opened for another spec
  (fingerprint or SPEC_VERSION) is refused with both sides named.
- ``seg-<first seq, 20 digits>.pt``: one segment, a ``torch.save`` dict of plain values and tensors
  (``torch.load(weights_only=True)`` reads it): ``format``, ``fingerprint``, ``first_seq`` and, for N
  transitions, ``seq`` (N,) int64 (global, consecutive, from 0), ``obs`` and ``next_obs``
  (N, obs_dim) float32 raw observations (the policy's normalizer is not applied), ``action`` (N, D)
  int64 flat MultiDiscrete action that was applied, ``logprob`` (N,) float32 behaviour
  log-probability (nan for fallback/static steps), ``reward`` (N,) float32 (the spec's reward of
  the interval after the action), ``done`` (N,) bool (the episode ended: simulation only), ``mode``
  (N,) int8 (MODE_POLICY, MODE_EXPLORE, MODE_FALLBACK), ``time`` (N,) float64 backend seconds.

Segments are written to a temporary name and renamed, so a reader in another process (the
federated client) never sees half a segment. Transition t is (obs_t, action_t, reward_{t+1},
obs_{t+1}); the stream's last record is not marked done (a tenant never ends), bootstrap from
``next_obs``. Oldest segments are deleted beyond ``max_segments``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from shaping.spec import SPEC_VERSION, ObservationLayout, SpecError, TenantSpec
from shaping.spec.action import ActionLayout

FORMAT = 1
MODE_POLICY, MODE_EXPLORE, MODE_FALLBACK = 0, 1, 2
_SEG = re.compile(r"^seg-(\d{20})\.pt$")
_FIELDS = ("obs", "next_obs", "action", "logprob", "reward", "done", "mode", "time")


class ExperienceBatch(NamedTuple):
    """Transitions read from a store, as tensors with N rows (see the module docstring)."""

    seq: torch.Tensor
    obs: torch.Tensor
    next_obs: torch.Tensor
    action: torch.Tensor
    logprob: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    mode: torch.Tensor
    time: torch.Tensor

    @property
    def size(self) -> int:
        """Number of transitions N."""
        return int(self.seq.shape[0])

    @property
    def next_since(self) -> int:
        """The ``since`` to pass to the next read to get only newer transitions."""
        return int(self.seq[-1]) + 1 if self.seq.numel() else -1


@dataclass(frozen=True)
class Transition:
    """One transition as the control loop appends it."""

    obs: torch.Tensor
    action: torch.Tensor
    logprob: float
    reward: float
    next_obs: torch.Tensor
    done: bool
    mode: int
    time: float


def _meta(spec: TenantSpec) -> dict[str, object]:
    layout = ActionLayout(spec)
    return {
        "format": FORMAT,
        "spec_version": SPEC_VERSION,
        "fingerprint": spec.fingerprint(),
        "tenant": spec.name,
        "obs_dim": ObservationLayout(spec).size,
        "action_dim": len(layout.nvec),
        "nvec": [int(n) for n in layout.nvec],
        "obs_names": ObservationLayout(spec).names,
    }


class ExperienceStore:
    """Append transitions (writer) and read them back as tensors (reader), in one directory.

    Args:
        root: the store's directory (created).
        spec: the tenant; None opens an existing store read-only with the spec it was written for.
        segment_size: transitions per segment file (flushed when full, and by ``flush``/``close``).
        max_segments: oldest segments beyond this many are deleted (None: keep all).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        spec: TenantSpec | None = None,
        *,
        segment_size: int = 256,
        max_segments: int | None = None,
    ) -> None:
        if segment_size < 1 or (max_segments is not None and max_segments < 1):
            raise ValueError("segment_size and max_segments must be >= 1")
        self.root = Path(root)
        self.segment_size = segment_size
        self.max_segments = max_segments
        self.meta = self._open_meta(spec)
        self.writable = spec is not None
        self._buf: list[Transition] = []
        last = self._segments()[-1:] if self.root.is_dir() else []
        self._next_seq = self._end_of(last[0]) if last else 0

    def _open_meta(self, spec: TenantSpec | None) -> dict[str, object]:
        path = self.root / "meta.json"
        if path.is_file():
            meta = json.loads(path.read_text())
            if spec is not None:
                ours = _meta(spec)
                if (meta.get("spec_version"), meta.get("fingerprint")) != (ours["spec_version"], ours["fingerprint"]):
                    raise SpecError(
                        f"experience store {os.fspath(self.root)!r} holds tenant {meta.get('tenant')!r} "
                        f"(spec {meta.get('spec_version')!r}, fingerprint {meta.get('fingerprint')!r}); "
                        f"tenant {spec.name!r} has spec {SPEC_VERSION!r}, fingerprint {ours['fingerprint']!r}: "
                        "use another directory"
                    )
            return dict(meta)
        if spec is None:
            raise FileNotFoundError(f"no experience store at {os.fspath(self.root)!r} (missing meta.json)")
        self.root.mkdir(parents=True, exist_ok=True)
        meta = _meta(spec)
        tmp = self.root / ".meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
        return meta

    def _segments(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if _SEG.match(p.name))

    @staticmethod
    def _first_of(path: Path) -> int:
        m = _SEG.match(path.name)
        assert m is not None
        return int(m.group(1))

    def _end_of(self, path: Path) -> int:
        seg = torch.load(path, map_location="cpu", weights_only=True)
        return int(seg["first_seq"]) + int(seg["seq"].shape[0])

    @property
    def next_seq(self) -> int:
        """Sequence number the next appended transition gets."""
        return self._next_seq + len(self._buf)

    def append(self, t: Transition) -> int:
        """Append one transition; returns its sequence number."""
        if not self.writable:
            raise PermissionError("experience store opened without a spec is read-only")
        seq = self.next_seq
        self._buf.append(t)
        if len(self._buf) >= self.segment_size:
            self.flush()
        return seq

    def flush(self) -> None:
        """Write buffered transitions as one segment (atomically) and apply retention."""
        if not self._buf:
            return
        b, first = self._buf, self._next_seq
        seg = {
            "format": FORMAT,
            "fingerprint": self.meta["fingerprint"],
            "first_seq": first,
            "seq": torch.arange(first, first + len(b), dtype=torch.int64),
            "obs": torch.stack([t.obs.detach().cpu().float().view(-1) for t in b]),
            "next_obs": torch.stack([t.next_obs.detach().cpu().float().view(-1) for t in b]),
            "action": torch.stack([torch.as_tensor(t.action).long().view(-1) for t in b]),
            "logprob": torch.tensor([t.logprob for t in b], dtype=torch.float32),
            "reward": torch.tensor([t.reward for t in b], dtype=torch.float32),
            "done": torch.tensor([t.done for t in b], dtype=torch.bool),
            "mode": torch.tensor([t.mode for t in b], dtype=torch.int8),
            "time": torch.tensor([t.time for t in b], dtype=torch.float64),
        }
        path = self.root / f"seg-{first:020d}.pt"
        tmp = self.root / f".tmp-{path.name}"
        torch.save(seg, tmp)
        os.replace(tmp, path)
        self._next_seq += len(b)
        self._buf = []
        if self.max_segments is not None:
            for old in self._segments()[: -self.max_segments]:
                old.unlink(missing_ok=True)

    def read(self, since: int = 0, limit: int | None = None) -> ExperienceBatch:
        """Flushed transitions with ``seq >= since`` (at most ``limit``, oldest first), as tensors.

        Transitions still buffered in a writer are not visible until it flushes.
        """
        segs = self._segments()
        firsts = [self._first_of(p) for p in segs]
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("seq", *_FIELDS)}
        for i, path in enumerate(segs):
            if i + 1 < len(firsts) and firsts[i + 1] <= since:
                continue  # the whole segment is older than since
            try:
                seg = torch.load(path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                continue  # deleted by retention while we listed
            keep = seg["seq"] >= since
            for k in parts:
                parts[k].append(seg[k][keep])
        obs_dim, act_dim = int(str(self.meta["obs_dim"])), int(str(self.meta["action_dim"]))
        empty = {
            "seq": torch.empty(0, dtype=torch.int64), "obs": torch.empty(0, obs_dim),
            "next_obs": torch.empty(0, obs_dim), "action": torch.empty(0, act_dim, dtype=torch.int64),
            "logprob": torch.empty(0), "reward": torch.empty(0), "done": torch.empty(0, dtype=torch.bool),
            "mode": torch.empty(0, dtype=torch.int8), "time": torch.empty(0, dtype=torch.float64),
        }  # fmt: skip
        out = {k: torch.cat(v) if v else empty[k] for k, v in parts.items()}
        if limit is not None:
            out = {k: v[:limit] for k, v in out.items()}
        return ExperienceBatch(**out)

    def close(self) -> None:
        """Flush what is buffered."""
        if self.writable:
            self.flush()

