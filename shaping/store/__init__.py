"""Durable storage of tenants' rules and of what their agents report (SQLite by default)."""

from shaping.store.migrations import SCHEMA_VERSION, StoreError, migrate
from shaping.store.sqlite import AlreadyExistsError, ConflictError, NotFoundError, RulesStore

__all__ = ["SCHEMA_VERSION", "AlreadyExistsError", "ConflictError", "NotFoundError", "RulesStore", "StoreError",
           "migrate"]
