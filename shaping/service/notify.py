"""Change notification between writers and server-streaming watchers, one counter per key."""

from __future__ import annotations

import threading


class Notifier:
    """Watchers wait until a key's counter moves past the value they last saw."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counters: dict[str, int] = {}
        self._closed = False

    def bump(self, key: str) -> None:
        """Signal a change of `key`."""
        with self._cond:
            self._counters[key] = self._counters.get(key, 0) + 1
            self._cond.notify_all()

    def counter(self, key: str) -> int:
        """The current counter of `key`."""
        with self._cond:
            return self._counters.get(key, 0)

    def wait(self, key: str, seen: int, timeout: float) -> int:
        """Wait up to `timeout` seconds for the counter of `key` to differ from `seen`; return it."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._counters.get(key, 0) != seen, timeout)
            return self._counters.get(key, 0)

    def close(self) -> None:
        """Wake every watcher for good (server shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed
