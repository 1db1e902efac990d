"""Application metrics pushed by the tenant: JSON lines on a local Unix datagram socket, validated.

One datagram carries one or more lines, each a JSON object::

    {"class": "game", "app_metric": 0.93}
    {"class": "trades", "app_metric": 0.99, "p99_ms": 12.5, "demand_mbps": 8.0}

- ``class`` (required): a class name of the tenant;
- ``app_metric``: the application metric in [0, 1] (FPS/60, completion rate, video QoE, ...);
- ``p99_ms``: the application's own p99 one-way delay, > 0 (it overrides the network estimate);
- ``demand_mbps``: what the application wants to send, >= 0 (it raises the measured offered rate).

At least one of the three values must be present. A malformed line is rejected with an
AppMetricError naming the problem (counted and logged by the server; the rest of the datagram
is still read). ``ingest`` (JSON lines) and ``put`` (one class's values) are the in-process entry
points with the same validation; the tenant agent feeds ``put`` with what the Client API received.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shaping.spec import TenantSpec

LOG = logging.getLogger("fedshape.monitor.appmetrics")
_KEYS = ("app_metric", "p99_ms", "demand_mbps")


class AppMetricError(ValueError):
    """A pushed application metric that does not fit the schema."""


@dataclass(frozen=True)
class AppReport:
    """The latest values pushed for one class (None: never pushed) and when."""

    app_metric: float | None = None
    p99_ms: float | None = None
    demand_mbps: float | None = None
    time: float = -math.inf


def parse_line(line: str, classes: dict[str, int]) -> tuple[int, dict[str, float]]:
    """Validate one JSON line; returns (class index, the values it sets)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise AppMetricError(f"not JSON ({err.msg} at column {err.colno}): {line[:120]!r}") from None
    if not isinstance(obj, dict):
        raise AppMetricError(f"expected a JSON object, got {type(obj).__name__}: {line[:120]!r}")
    return check_values(obj, classes)


def check_values(obj: Mapping[str, Any], classes: dict[str, int]) -> tuple[int, dict[str, float]]:
    """Validate one push (``class`` and its values) of any source; returns (class index, the values it sets)."""
    name = obj.get("class")
    if name not in classes:
        raise AppMetricError(f"unknown class {name!r}; the tenant's classes are {sorted(classes)}")
    extra = sorted(set(obj) - {"class", *_KEYS})
    if extra:
        raise AppMetricError(f"class {name!r}: unknown keys {extra}; allowed: class, {', '.join(_KEYS)}")
    values: dict[str, float] = {}
    for key in _KEYS:
        if key not in obj:
            continue
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise AppMetricError(f"class {name!r}: {key} must be a finite number, got {v!r}")
        ok = {"app_metric": 0.0 <= v <= 1.0, "p99_ms": v > 0, "demand_mbps": v >= 0}[key]
        if not ok:
            rng = {"app_metric": "in [0, 1]", "p99_ms": "> 0", "demand_mbps": ">= 0"}[key]
            raise AppMetricError(f"class {name!r}: {key} must be {rng}, got {v!r}")
        values[key] = float(v)
    if not values:
        raise AppMetricError(f"class {name!r}: push at least one of {', '.join(_KEYS)}")
    return classes[name], values


class AppMetrics:
    """The latest application values per class, fed by ``ingest`` and optionally a Unix datagram socket.

    Args:
        spec: the tenant (its class names).
        socket_path: where to listen (None: no socket, ``ingest`` only). A stale socket file there is
            replaced; any other file there is an error.
        clock: monotonic clock of the report times.
        logger: where rejected lines are logged.
    """

    def __init__(
        self,
        spec: TenantSpec,
        socket_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = LOG,
    ) -> None:
        self.classes = {c.name: i for i, c in enumerate(spec.classes)}
        self.clock = clock
        self.log = logger
        self.errors = 0
        self.last_error = ""
        self._reports = [AppReport() for _ in spec.classes]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.path = Path(socket_path) if socket_path is not None else None
        if self.path is not None:
            self._listen(self.path)

    def _listen(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.fspath(path))
        os.chmod(path, 0o660)  # the tenant's group may push, others may not
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="fedshape-appmetrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.ingest(data.decode(errors="replace"), strict=False)

    def ingest(self, text: str, strict: bool = True) -> int:
        """Apply every line of ``text``; returns how many were accepted.

        Raises:
            AppMetricError: on the first bad line when ``strict`` (else counted, logged, skipped).
        """
        accepted = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                idx, values = parse_line(line, self.classes)
            except AppMetricError as err:
                if strict:
                    raise
                self.errors += 1
                self.last_error = str(err)
                self.log.warning("rejected application metric: %s", err)
                continue
            self._store(idx, values, self.clock())
            accepted += 1
        return accepted

    def put(self, class_name: str, values: Mapping[str, float], age_s: float = 0.0) -> None:
        """Apply one push of ``class_name`` made ``age_s`` seconds ago (validated as a socket line is).

        Raises:
            AppMetricError: unknown class, unknown key, a value out of range, no value, or a negative age.
        """
        if not (math.isfinite(age_s) and age_s >= 0):
            raise AppMetricError(f"class {class_name!r}: age_s must be a finite number >= 0, got {age_s!r}")
        if "class" in values:
            raise AppMetricError(f"class {class_name!r}: 'class' is the argument, not a value")
        idx, checked = check_values({**values, "class": class_name}, self.classes)
        self._store(idx, checked, self.clock() - age_s)

    def _store(self, idx: int, values: dict[str, float], at: float) -> None:
        with self._lock:
            old = self._reports[idx]
            if at < old.time:
                return  # an older push arriving late (a replay, a slow path) must not undo a newer one
            self._reports[idx] = AppReport(
                values.get("app_metric", old.app_metric), values.get("p99_ms", old.p99_ms),
                values.get("demand_mbps", old.demand_mbps), at,
            )  # fmt: skip

    def snapshot(self, max_age_s: float | None = None) -> list[AppReport]:
        """Latest report of each class in spec order; reports older than max_age_s read as never pushed."""
        now = self.clock()
        with self._lock:
            reports = list(self._reports)
        if max_age_s is None:
            return reports
        return [r if now - r.time <= max_age_s else AppReport() for r in reports]

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._sock is not None:
            self._sock.close()
            if self.path is not None:
                self.path.unlink(missing_ok=True)
