"""SQLite store: schema migrations, transactions that write all or nothing, revisions, durability."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from shaping.rules import RulesError
from shaping.store import SCHEMA_VERSION, ConflictError, NotFoundError, RulesStore, StoreError, migrate
from shaping.store.migrations import MIGRATIONS


def test_migrates_an_old_database_keeping_its_data(tmp_path, rules):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 1
    conn.execute("INSERT INTO tenants VALUES ('acme', 100.0, 1, '{\"tenant\": \"acme\", \"cap_mbps\": 100.0,"
                 " \"revision\": 1}', 0.0)")
    conn.close()
    store = RulesStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS) >= 2
        got = store.get("acme")
        assert got is not None and got.revision == 1
        store.update("acme", lambda old: replace(old, entities=rules.entities), actor="t", what="w")
        assert store.changes("acme")[0][:3] == (2, "t", "w")  # the table migration 2 added
    finally:
        store.close()


def test_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this FedShape"):
        RulesStore(path)


def test_failed_change_writes_nothing(tmp_path, rules):
    store = RulesStore(tmp_path / "s.db")
    try:
        store.create_tenant("acme", 100.0)
        before = store.snapshot()

        def bad(old):
            raise RulesError("no")

        with pytest.raises(RulesError):
            store.update("acme", bad, actor="t", what="w")
        assert store.snapshot() == before
        with pytest.raises(NotFoundError):
            store.update("ghost", lambda r: r, actor="t", what="w")
        new = store.update("acme", lambda old: replace(old, entities=rules.entities), actor="t", what="w",
                           expect_revision=1)
        assert new.revision == 2
        with pytest.raises(ConflictError):
            store.update("acme", lambda r: r, actor="t", what="w", expect_revision=1)
        assert store.get("acme") == new
        assert store.integrity_check() == "ok"
        store.delete_tenant("acme")
        assert store.get("acme") is None and store.status("acme") is None
    finally:
        store.close()


def test_wal_and_full_sync(tmp_path):
    store = RulesStore(tmp_path / "w.db")
    try:
        conn = store._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_revoked_serials(tmp_path):
    store = RulesStore(tmp_path / "r.db", clock=lambda: 5.0)
    try:
        assert store.revoked_serials() == frozenset()
        assert store.revoke("a1b", "key leaked", actor="provider/ops")
        assert not store.revoke("a1b", "again")  # the first record stays
        assert store.revoked_serials() == frozenset({"a1b"})
        assert store.revoked() == [("a1b", "key leaked", "provider/ops", 5.0)]
    finally:
        store.close()
    reopened = RulesStore(tmp_path / "r.db")
    try:
        assert reopened.revoked_serials() == frozenset({"a1b"})
    finally:
        reopened.close()
