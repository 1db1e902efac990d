"""Bounded UDP traffic between the namespaces of a pair: a paced sender and a receiver that reports JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time

RECEIVER = r"""
import json, socket, sys, time
addr, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, socket.IP_RECVTOS, 1)
s.bind((addr, port))
s.settimeout(duration + 3.0)
print("ready", flush=True)
stamps, tos = [], None
try:
    data, anc, _, _ = s.recvmsg(2048, 64)
    end = time.monotonic() + duration
    stamps.append((time.monotonic(), len(data)))
    for lvl, typ, val in anc:
        if lvl == socket.SOL_IP and typ == socket.IP_TOS:
            tos = val[0]
    s.settimeout(0.2)
    while time.monotonic() < end:
        try:
            data = s.recv(2048)
        except TimeoutError:
            continue
        stamps.append((time.monotonic(), len(data)))
except TimeoutError:
    pass
print(json.dumps({"stamps": stamps, "tos": tos}), flush=True)
"""

SENDER = r"""
import socket, sys, time
src, dst, port, mbps, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
payload = b"x" * 1400
per_ms = mbps * 1e6 / 8 / 1000 / len(payload)
start = time.monotonic(); sent = 0.0; n = 0
while (now := time.monotonic()) - start < duration:
    sent += per_ms
    while n < sent:
        try:
            s.sendto(payload, (dst, port))
        except OSError:
            pass  # a full HTB queue refuses local datagrams (ENOBUFS): that is the shaping
        n += 1
    time.sleep(0.001)
print(n)
"""

#: Bytes a 1400-byte UDP payload takes on the wire as HTB counts it (IP 20 + UDP 8 + Ethernet 14).
WIRE_OVERHEAD = 42


def udp_run(
    sender_ns: str, src: str, receiver_ns: str, dst: str, port: int, mbps: float, duration: float
) -> dict[str, object]:
    """Send ``mbps`` for ``duration`` seconds; return the receiver's packets (time, size) and first TOS."""
    recv = subprocess.Popen(
        ["ip", "netns", "exec", receiver_ns, sys.executable, "-c", RECEIVER, dst, str(port), str(duration)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        sender = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                sender_ns,
                sys.executable,
                "-c",
                SENDER,
                src,
                dst,
                str(port),
                str(mbps),
                str(duration),
            ],
            check=True,
            capture_output=True,
            timeout=duration + 10,
        )
        out, _ = recv.communicate(timeout=duration + 10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    result["sent"] = int(sender.stdout.decode().split()[-1])
    return result


def wire_mbps(stamps: list[list[float]], skip_s: float = 0.5) -> float:
    """Received wire rate after the first ``skip_s`` seconds (HTB's burst drains there)."""
    t0 = stamps[0][0] + skip_s
    kept = [(t, n) for t, n in stamps if t >= t0]
    if len(kept) < 2:
        return 0.0
    span = kept[-1][0] - kept[0][0]
    return sum(n + WIRE_OVERHEAD for _, n in kept[1:]) * 8 / span / 1e6
