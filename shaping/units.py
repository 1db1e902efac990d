"""Unit conversions at the edges: FedShape speaks Mbit/s and milliseconds inside, Prometheus wants base units."""

from __future__ import annotations

#: Mbit/s (what plans, the simulator and the API speak) to bytes per second (Prometheus's base unit).
BYTES_PER_S_PER_MBPS = 1e6 / 8
#: Milliseconds to seconds.
S_PER_MS = 1e-3
