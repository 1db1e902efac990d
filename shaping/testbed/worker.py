"""Process entry of one traffic role inside a namespace: `python -m shaping.testbed.worker ROLE JSON`.

The runner starts it with `ip netns exec NS` (an argv list, no shell). It prints `READY` once
ready and its result as one `RESULT {json}` line. A generator starts when a line arrives on
stdin; the sink serves until a line arrives on stdin, or its max_s passes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import sys
import time
from typing import Any

from shaping.testbed import traffic
from shaping.testbed.sink import SINK_MAX_S, Sink, SinkConfig

ROLES = ("sink", "gaming", "udp_blast", "transactions", "bulk")
#: Roles that timestamp packets, and the niceness they run at (as root).
LATENCY_ROLES = ("sink", "gaming", "transactions")
LATENCY_NICE = -10
#: Longest wait of a generator for its start signal, seconds.
GO_TIMEOUT_S = 60.0


def run_role(role: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one role with keyword arguments; returns its JSON-able result."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known: {ROLES}")
    if role in LATENCY_ROLES and os.geteuid() == 0:
        # The latency measurers must not wait behind other processes for a CPU: on the shared 2-core
        # host (load 15-20) nice 0 gave 30-130 ms scheduling gaps, i.e. a p99 of the host, not the network.
        os.setpriority(os.PRIO_PROCESS, 0, LATENCY_NICE)
    if role == "sink":
        cfg = SinkConfig(**args)
        cfg.txn_ports = {int(k): int(v) for k, v in cfg.txn_ports.items()}
        sink = Sink(cfg)
        sink.start()
        print("READY", flush=True)
        deadline = time.monotonic() + min(cfg.max_s, SINK_MAX_S)
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], 0.2)
            if ready:
                break
        return sink.stop()
    # Generators start together: each says READY once imported and waits for a line on stdin, so
    # a slow interpreter start on a loaded host does not shift its traffic out of the measured window.
    print("READY", flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], GO_TIMEOUT_S)
    if not ready or not sys.stdin.readline().strip():
        raise TimeoutError(f"{role}: no start signal within {GO_TIMEOUT_S:.0f} s")
    if role == "gaming":
        return dataclasses.asdict(traffic.gaming_client(**args))
    if role == "udp_blast":
        return {"sent": traffic.udp_blast(**args)}
    if role == "transactions":
        res = traffic.transactions_client(**args)
        return {**dataclasses.asdict(res), "completion_rate": res.completion_rate}
    if role == "bulk":
        return {"bytes": traffic.bulk_client(**args)}
    raise ValueError(f"unknown role {role!r}; known: {ROLES}")


def main(argv: list[str]) -> int:
    """Entry point: argv is [ROLE, JSON]."""
    if len(argv) != 2:
        print(f"usage: python -m shaping.testbed.worker ROLE JSON (ROLE in {ROLES})", file=sys.stderr)
        return 2
    result = run_role(argv[0], json.loads(argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
