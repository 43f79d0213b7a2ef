"""hyrelay.store: namespaces, hybrid connections and SAS rules, plus a hot-path snapshot."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Store
from .model import (
    DEFAULT_NAMESPACE,
    MAX_HCS,
    MAX_RULES,
    RIGHTS,
    ROOT_RULE,
    AlreadyExists,
    HybridConnection,
    InvalidKey,
    InvalidName,
    InvalidRights,
    LimitExceeded,
    Namespace,
    NotFound,
    Rule,
    StoreError,
    generate_key,
    normalize_rights,
    validate_hc_name,
    validate_key,
    validate_namespace_name,
    validate_rule_name,
)
from .snapshot import Snapshot
from .sqlite import SqliteStore

DB_FILENAME = "hyrelay.db"


def open_store(data_dir: str | os.PathLike[str]) -> SqliteStore:
    """Open (creating if needed) the SQLite store at <data_dir>/hyrelay.db."""
    return SqliteStore(Path(data_dir) / DB_FILENAME)


__all__ = [
    "DB_FILENAME", "DEFAULT_NAMESPACE", "MAX_HCS", "MAX_RULES", "RIGHTS", "ROOT_RULE",
    "AlreadyExists", "HybridConnection", "InvalidKey", "InvalidName", "InvalidRights",
    "LimitExceeded", "Namespace", "NotFound", "Rule", "Snapshot", "SqliteStore", "Store",
    "StoreError", "generate_key", "normalize_rights", "open_store", "validate_hc_name",
    "validate_key", "validate_namespace_name", "validate_rule_name",
]
