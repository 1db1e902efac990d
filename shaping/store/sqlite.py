"""SQLite rules store: one JSON rules document per tenant, WAL journal, serialized writes, versioned schema."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from shaping.rules.codec import rules_from_dict, rules_to_dict
from shaping.rules.model import RuleSet
from shaping.store.migrations import StoreError, migrate


def _q(name: str) -> str:
    """A name for an error message, cut short (names come from requests and may be long)."""
    return repr(name if len(name) <= 64 else name[:64] + "...")


class NotFoundError(KeyError):
    """The tenant does not exist."""


class AlreadyExistsError(KeyError):
    """The tenant exists already."""


class ConflictError(RuntimeError):
    """The caller's expected revision is not the stored one (someone else wrote in between)."""


class _Pending:
    """A queued write: its body, and its result or error once the batch holding it committed."""

    __slots__ = ("body", "done", "error", "result")

    def __init__(self, body: Callable[[sqlite3.Connection], Any]) -> None:
        self.body = body
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class RulesStore:
    """Tenants' rules, agent status, application metrics and federation status in one SQLite file.

    Every write is one `BEGIN IMMEDIATE` transaction, committed with `synchronous=FULL` in WAL mode, so
    a write acknowledged to a client survives a crash of the process or of the machine. Each thread gets
    its own connection (sqlite3 connections are not shared between threads).
    """

    def __init__(self, path: str | Path = "fedshape.db", *, clock: Callable[[], float] = time.time,
                 busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        self.clock = clock
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._conns: list[sqlite3.Connection] = []
        # Parsed rules by tenant, valid while the stored revision matches: reads then cost one indexed lookup.
        self._cache: dict[str, RuleSet] = {}
        # Revoked serials, checked on every call; None until read, dropped by each revocation in this process.
        self._revoked: frozenset[str] | None = None
        self.schema_version = migrate(self._conn())

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one write.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    def _write(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `body` in a write transaction and return its result once committed (group commit).

        Writers queue their bodies; whoever holds the write lock commits everything queued so far in one
        transaction, each body in its own savepoint (a body that raises is rolled back alone). One fsync
        then acknowledges many writes, so throughput does not stop at one write per disk flush. Waiting on
        a lock is also fair, unlike SQLite's busy handler, which polls with sleeps of up to 100 ms.
        """
        item = _Pending(body)
        with self._lock:
            self._queue.append(item)
        with self._write_lock:
            if not item.done.is_set():
                with self._lock:
                    batch, self._queue = self._queue, []
                self._commit(self._conn(), batch)
        if item.error is not None:
            raise item.error
        return item.result

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for it in batch:
                    conn.execute("SAVEPOINT w")
                    try:
                        it.result = it.body(conn)
                        conn.execute("RELEASE w")
                    except Exception as err:
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        it.error = err
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as err:
            for it in batch:
                if it.error is None:
                    it.error = err if isinstance(err, Exception) else RuntimeError(f"write interrupted: {err!r}")
            raise
        finally:
            for it in batch:
                it.done.set()

    # tenants and rules

    def create_tenant(self, name: str, cap_mbps: float, actor: str = "provider", *,
                      address_space: tuple[str, ...] = (), check: Callable[[RuleSet], None] | None = None) -> RuleSet:
        """Add a tenant with no rules; AlreadyExistsError if it exists.

        `check` runs inside the write transaction on the new tenant's rules and may raise: then nothing is written.
        """
        rules = RuleSet(tenant=name, cap_mbps=cap_mbps, revision=1, address_space=address_space)

        def body(conn: sqlite3.Connection) -> RuleSet:
            if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise AlreadyExistsError(f"tenant {_q(name)} exists already")
            if check is not None:
                check(rules)
            conn.execute("INSERT INTO tenants VALUES (?, ?, ?, ?, ?)",
                         (name, cap_mbps, 1, json.dumps(rules_to_dict(rules)), self.clock()))
            self._cache.pop(name, None)
            self._log(conn, name, 1, actor, "create tenant")
            return rules

        out: RuleSet = self._write(body)
        return out

    def delete_tenant(self, name: str, actor: str = "provider") -> None:
        """Remove a tenant with everything stored about it; NotFoundError if absent."""

        def body(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM tenants WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"tenant {_q(name)} does not exist")
            self._cache.pop(name, None)
            self._log(conn, name, 0, actor, "delete tenant")

        self._write(body)

    def get(self, tenant: str) -> RuleSet | None:
        """The tenant's rules, or None when it does not exist."""
        conn = self._conn()
        row = conn.execute("SELECT revision FROM tenants WHERE name = ?", (tenant,)).fetchone()
        if row is None:
            return None
        cached = self._cache.get(tenant)
        if cached is not None and cached.revision == row[0]:
            return cached
        row = conn.execute("SELECT rules FROM tenants WHERE name = ?", (tenant,)).fetchone()
        if row is None:
            return None
        rules = rules_from_dict(json.loads(row[0]))
        self._cache[tenant] = rules
        return rules

    def tenants(self) -> list[RuleSet]:
        """Every tenant's rules, by name."""
        rows = self._conn().execute("SELECT name, revision, rules FROM tenants ORDER BY name").fetchall()
        out = []
        for name, revision, text in rows:
            # Every rules write checks its addresses against all tenants: parse only what changed.
            cached = self._cache.get(name)
            if cached is None or cached.revision != revision:
                cached = self._cache[name] = rules_from_dict(json.loads(text))
            out.append(cached)
        return out

    def update(self, tenant: str, change: Callable[[RuleSet], RuleSet], *, actor: str, what: str,
               expect_revision: int | None = None) -> RuleSet:
        """Read, change and write a tenant's rules in one transaction; the revision grows by one.

        `change` validates and may raise: then nothing is written. Raises NotFoundError, ConflictError.
        """

        def body(conn: sqlite3.Connection) -> RuleSet:
            row = conn.execute("SELECT rules FROM tenants WHERE name = ?", (tenant,)).fetchone()
            if row is None:
                raise NotFoundError(f"tenant {_q(tenant)} does not exist")
            old = rules_from_dict(json.loads(row[0]))
            if expect_revision is not None and expect_revision != old.revision:
                raise ConflictError(f"tenant {_q(tenant)} is at revision {old.revision}, not {expect_revision}")
            new = replace(change(old), tenant=tenant, revision=old.revision + 1)
            conn.execute("UPDATE tenants SET rules = ?, cap_mbps = ?, revision = ?, updated_at = ? WHERE name = ?",
                         (json.dumps(rules_to_dict(new)), new.cap_mbps, new.revision, self.clock(), tenant))
            self._log(conn, tenant, new.revision, actor, what)
            self._cache[tenant] = new  # harmless if the commit fails: the stored revision will not match
            return new

        out: RuleSet = self._write(body)
        return out

    def _log(self, conn: sqlite3.Connection, tenant: str, revision: int, actor: str, what: str) -> None:
        conn.execute("INSERT INTO changes (tenant, revision, actor, what, at) VALUES (?, ?, ?, ?, ?)",
                     (tenant, revision, actor, what[:200], self.clock()))

    def changes(self, tenant: str, limit: int = 20) -> list[tuple[int, str, str, float]]:
        """The latest changes of a tenant: (revision, actor, what, time), newest first."""
        rows = self._conn().execute(
            "SELECT revision, actor, what, at FROM changes WHERE tenant = ? ORDER BY id DESC LIMIT ?", (tenant, limit)
        ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    # agent status, application metrics, federation

    def put_status(self, tenant: str, status: dict[str, Any]) -> None:
        """Replace the latest status report of a tenant's agent; NotFoundError if the tenant is absent."""

        def body(conn: sqlite3.Connection) -> None:
            if not conn.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone():
                raise NotFoundError(f"tenant {_q(tenant)} does not exist")
            conn.execute("INSERT OR REPLACE INTO agent_status VALUES (?, ?, ?)",
                         (tenant, json.dumps(status), self.clock()))

        self._write(body)

    def status(self, tenant: str) -> tuple[dict[str, Any], float] | None:
        """The latest status report of a tenant's agent and when it arrived, or None."""
        row = self._conn().execute("SELECT status, updated_at FROM agent_status WHERE tenant = ?",
                                   (tenant,)).fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    def put_app_metrics(self, tenant: str, klass: str, values: dict[str, float]) -> None:
        """Record application metrics (name -> value) pushed for one class of a tenant."""
        now = self.clock()

        def body(conn: sqlite3.Connection) -> None:
            if not conn.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone():
                raise NotFoundError(f"tenant {_q(tenant)} does not exist")
            conn.executemany("INSERT OR REPLACE INTO app_metrics VALUES (?, ?, ?, ?, ?)",
                             [(tenant, klass, k, float(v), now) for k, v in values.items()])

        self._write(body)

    def app_metrics(self, tenant: str) -> dict[str, dict[str, tuple[float, float]]]:
        """Pushed application metrics of a tenant: class -> name -> (value, time)."""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for klass, name, value, at in self._conn().execute(
            "SELECT class, name, value, updated_at FROM app_metrics WHERE tenant = ? ORDER BY class, name", (tenant,)
        ):
            out.setdefault(klass, {})[name] = (float(value), float(at))
        return out

    def put_federation(self, status: dict[str, Any]) -> None:
        """Replace the federation status (round, privacy spent, ...)."""
        self._write(lambda conn: conn.execute("INSERT OR REPLACE INTO federation VALUES (1, ?, ?)",
                                              (json.dumps(status), self.clock())))

    def federation(self) -> tuple[dict[str, Any], float] | None:
        """The latest federation status and when it was written, or None."""
        row = self._conn().execute("SELECT status, updated_at FROM federation WHERE id = 1").fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    # revoked client certificates

    def revoke(self, serial: str, reason: str, actor: str = "provider") -> bool:
        """Record a revoked certificate serial (hex); False when it was revoked already (the first record stays)."""

        def body(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT OR IGNORE INTO revoked VALUES (?, ?, ?, ?)",
                               (serial, reason[:200], actor, self.clock()))
            return cur.rowcount == 1

        added: bool = self._write(body)
        self._revoked = None
        return added

    def revoked(self) -> list[tuple[str, str, str, float]]:
        """Every revoked serial: (serial, reason, actor, time), oldest first."""
        rows = self._conn().execute("SELECT serial, reason, actor, at FROM revoked ORDER BY at, serial").fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def revoked_serials(self) -> frozenset[str]:
        """The revoked serials, from memory after the first read (only this process writes the store)."""
        found = self._revoked
        if found is None:
            found = frozenset(r[0] for r in self._conn().execute("SELECT serial FROM revoked"))
            self._revoked = found
        return found

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` answer ('ok' when the file is sound)."""
        return str(self._conn().execute("PRAGMA integrity_check").fetchone()[0])

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table (tests compare snapshots to prove nothing was written)."""
        conn = self._conn()
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("tenants", "agent_status", "app_metrics", "federation", "changes", "revoked")}


__all__ = ["AlreadyExistsError", "ConflictError", "NotFoundError", "RulesStore", "StoreError"]
