"""Schema of the rules store as numbered migrations; `PRAGMA user_version` records the applied one."""

from __future__ import annotations

import sqlite3

#: Migration i (1-based) brings the schema from version i-1 to i. Append only; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    # 1: tenants with their rules (one JSON document per tenant, versioned by revision), agent status,
    # application metrics pushed by tenants, federation status written by the provider.
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        cap_mbps REAL NOT NULL,
        revision INTEGER NOT NULL,
        rules TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE agent_status (
        tenant TEXT PRIMARY KEY REFERENCES tenants(name) ON DELETE CASCADE,
        status TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE app_metrics (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        class TEXT NOT NULL,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant, class, name)
    );
    CREATE TABLE federation (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        status TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 2: a change log, so operators can see who changed a tenant's rules and when.
    """
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        revision INTEGER NOT NULL,
        actor TEXT NOT NULL,
        what TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX changes_tenant ON changes (tenant, revision);
    """,
    # 3: client certificates the provider revoked, by serial number (hex), refused on every call.
    """
    CREATE TABLE revoked (
        serial TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The database cannot be used (newer schema, corruption)."""


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to `target`, each in its own transaction; returns the version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema version {version} is newer than this FedShape's {SCHEMA_VERSION}")
    for i in range(version, target):
        # executescript would COMMIT first and run outside our transaction; run statements one by one.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[i].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(version, target)
