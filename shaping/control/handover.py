"""Model hand-over between the tenant's Flower client and its agent on the same host: a local directory.

The publisher (``publish_model``) writes each version into its own folder, ``model-<version>/``, holding
``model-<version>.npz`` and the ``summary.json`` card that shaping.agents.projection.read_model_card reads beside
a weights file (layout, hidden sizes), and only then replaces ``current.json`` atomically (write a temporary
file, fsync, ``os.replace``)::

    current.json            {"version": 7, "file": "model-7/model-7.npz", "sha256": "...", "published_at": ...}
    model-6/model-6.npz     the previous version, kept for the agent that is still loading it
    model-6/summary.json
    model-7/model-7.npz
    model-7/summary.json

A reader therefore sees either the old or the new ``current.json``, never a mix, and the file it names is
complete before it is named. Folders older than the last ``keep`` versions are removed.

The agent side (``ModelInbox``) stats ``current.json`` every call to ``poll`` and reads it only when the stat
changed; a version not newer than the last delivered one, an unreadable or corrupt ``current.json``, a missing
file or a checksum mismatch is logged once and skipped, never raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from shaping.agents.global_model import save_weights

LOG = logging.getLogger("fedshape.handover")
#: The pointer file naming the version in force.
CURRENT = "current.json"
#: Folder of one version.
_VERSION_DIR = re.compile(r"^model-(\d+)$")


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a crash after os.replace must not bring the old name back)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_current(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``current.json`` of a hand-over directory; None when there is none yet.

    Raises:
        ValueError: it is not a JSON object with an int ``version`` and a str ``file``.
    """
    path = Path(directory) / CURRENT
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int) or not isinstance(data.get("file"), str):
        raise ValueError(f"{path} lacks an int 'version' and a str 'file'")
    return data


def _versions(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if p.is_dir() and (m := _VERSION_DIR.match(p.name)))


def publish_model(
    directory: str | os.PathLike[str],
    weights: str | os.PathLike[str] | Sequence[np.ndarray],
    card: Mapping[str, Any],
    version: int,
    *,
    keep: int = 2,
    clock: Callable[[], float] = time.time,
) -> Path:
    """Publish a global model for the agent: write its folder, then point ``current.json`` at it.

    Args:
        directory: the hand-over directory (created if missing).
        weights: a weights .npz (shaping.agents.global_model.save_weights) to copy, or the arrays to save.
        card: the model card written as the version's summary.json (at least ``layout`` and ``hidden_sizes``,
            as experiments.federated writes beside its checkpoints).
        version: the version number; must be newer than the current one.
        keep: versions kept (the current one and ``keep - 1`` before it); older folders are removed.
        clock: wall clock of ``published_at`` (seconds since the epoch).
    Returns:
        The path of the published weights file.
    Raises:
        ValueError: version not newer than the current one, or keep < 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    try:
        current = read_current(root)
    except ValueError:
        current = None  # a corrupt pointer is overwritten by this publication
    if current is not None and version <= int(current["version"]):
        raise ValueError(f"model version {version} is not newer than the current version {current['version']}")
    name = f"model-{version}"
    # Build the folder under a temporary name and rename it whole: a reader never sees half a version.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        target = tmp / f"{name}.npz"
        if isinstance(weights, (str, os.PathLike)):
            shutil.copyfile(weights, target)
        else:
            save_weights(target, weights)
        (tmp / "summary.json").write_text(json.dumps(dict(card), indent=1))
        for f in (target, tmp / "summary.json"):
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        final = root / name
        if final.exists():  # a version folder that never became current (a publisher died before the pointer)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    path = final / f"{name}.npz"
    pointer = {"version": version, "file": f"{name}/{name}.npz", "sha256": _sha256(path), "published_at": clock()}
    _write_json_atomic(root / CURRENT, pointer)
    for old in _versions(root)[:-keep]:
        shutil.rmtree(root / f"model-{old}", ignore_errors=True)
    return path


class ModelUpdate(NamedTuple):
    """A newly published model the inbox delivered."""

    version: int
    path: Path
    """The weights file (its summary.json beside it)."""


class ModelInbox:
    """The agent's side of the hand-over: ``poll`` returns each newer published version once.

    Args:
        directory: the hand-over directory (it may not exist yet).
        clock: monotonic clock; ``received_at`` holds its reading when the last update was delivered.
        logger: where skipped publications are reported (once per change of ``current.json``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = LOG,
    ) -> None:
        self.directory = Path(directory)
        self.clock, self.log = clock, logger
        self.version: int | None = None
        """The last version delivered."""
        self.received_at: float | None = None
        self._seen: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.directory / CURRENT)
        except OSError:
            return None
        # os.replace gives the pointer a new inode, so even a same-size rewrite within the mtime
        # granularity shows up.
        return st.st_ino, st.st_mtime_ns, st.st_size

    def poll(self) -> ModelUpdate | None:
        """The newest version if ``current.json`` changed to a newer, intact one since the last call; else None."""
        stat = self._stat()
        if stat is None or stat == self._seen:
            return None
        self._seen = stat
        try:
            current = read_current(self.directory)
            if current is None:
                return None
            version, path = int(current["version"]), self.directory / str(current["file"])
            if self.version is not None and version <= self.version:
                self.log.warning("model inbox %s: version %d is not newer than %d; ignored", self.directory,
                                 version, self.version)  # fmt: skip
                return None
            digest = current.get("sha256")
            if digest is not None and _sha256(path) != digest:
                raise ValueError(f"{path} does not match its sha256 in {CURRENT}")
        except (OSError, ValueError) as err:
            self.log.warning("model inbox %s: ignoring the publication: %s", self.directory, err)
            return None
        self.version, self.received_at = version, self.clock()
        return ModelUpdate(version, path)
