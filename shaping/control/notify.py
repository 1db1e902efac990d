"""The sd_notify protocol, both ends: the agent's heartbeats and the supervisor's listening socket.

A service tells its manager how it is doing with short ``KEY=VALUE`` lines (``READY=1``,
``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``) sent as one datagram to the Unix socket named by
``$NOTIFY_SOCKET`` (sd_notify(3); a leading ``@`` names an abstract socket). systemd's
``WatchdogSec=`` and fedshape-supervise (shaping.control.supervise) both listen there, so the same
agent runs under either.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

LOG = logging.getLogger("fedshape.notify")
#: struct ucred of SCM_CREDENTIALS (include/linux/socket.h): pid, uid, gid.
_UCRED = struct.Struct("iII")
#: The largest notification read; sd_notify messages are a few short lines.
MAX_MESSAGE = 4096


def socket_address(path: str) -> str:
    """The address to bind or send to for a ``$NOTIFY_SOCKET`` value (``@name``: abstract namespace)."""
    return "\0" + path[1:] if path.startswith("@") else path


class SdNotifier:
    """Sends sd_notify messages to one socket; without a socket every call does nothing.

    Sending never raises: a manager that went away must not stop the control loop, so a failure is
    logged once and the next message tries again.

    Args:
        path: the ``$NOTIFY_SOCKET`` value; None or empty: notifications are off.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path or None
        self._sock: socket.socket | None = None
        self._failing = False
        if self.path is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SdNotifier:
        """A notifier for ``environ['NOTIFY_SOCKET']`` (off when unset), as systemd and the supervisor set it."""
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether a manager listens."""
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=VALUE``) as one message; returns whether it was sent."""
        if self._sock is None or self.path is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), socket_address(self.path))
        except OSError as err:
            if not self._failing:
                LOG.warning("sd_notify to %s failed: %s (retried with every message)", self.path, err)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self) -> bool:
        """Start-up is over (``READY=1``)."""
        return self.notify("READY=1", f"MAINPID={os.getpid()}")

    def heartbeat(self) -> bool:
        """The service is alive (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """The service is shutting down on purpose (``STOPPING=1``): silence from now on is no hang."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the sending socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class Notification:
    """One sd_notify message as received."""

    pid: int
    """Sender's process id (SCM_CREDENTIALS; 0 when the kernel attached none)."""
    fields: dict[str, str]
    """Its ``KEY=VALUE`` lines."""


class NotifySocket:
    """The listening end: a Unix datagram socket that reports each message with its sender's pid.

    Args:
        path: filesystem path (or ``@name``) to bind; a stale socket file there is replaced.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        if not path.startswith("@") and os.path.exists(path):
            os.unlink(path)
        try:
            self.sock.bind(socket_address(path))
            # The sender's pid tells a message of the current agent from a late one of a killed agent.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except BaseException:
            self.sock.close()
            raise

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for a message; returns whether one is waiting."""
        ready, _, _ = select.select([self.sock], [], [], max(timeout_s, 0.0))
        return bool(ready)

    def receive(self) -> list[Notification]:
        """Every message waiting now (none: an empty list), oldest first."""
        out: list[Notification] = []
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return out
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
            fields = dict(line.partition("=")[::2] for line in data.decode(errors="replace").splitlines() if line)
            out.append(Notification(pid, fields))

    def close(self) -> None:
        """Close the socket and remove its file."""
        self.sock.close()
        if not self.path.startswith("@") and os.path.exists(self.path):
            os.unlink(self.path)
