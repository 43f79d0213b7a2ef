"""SQLite implementation of Store (stdlib sqlite3, WAL mode)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from .model import (
    DEFAULT_NAMESPACE, MAX_HCS, MAX_RULES, RIGHTS, ROOT_RULE, AlreadyExists, HybridConnection,
    InvalidName, LimitExceeded, Namespace, NotFound, Rule, StoreError, generate_key, normalize_rights,
    validate_hc_name, validate_key, validate_namespace_name, validate_rule_name,
)
from .snapshot import Snapshot

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000

# NOCASE on namespace and HC names gives Azure's case-insensitive lookups and rejects
# case-only duplicates; rule names stay case-sensitive because SAS key names match exactly.
_SCHEMA_V1 = """
CREATE TABLE namespaces (
    name        TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
    created_at  TEXT NOT NULL
);
CREATE TABLE hybrid_connections (
    namespace   TEXT NOT NULL COLLATE NOCASE
                REFERENCES namespaces(name) ON DELETE CASCADE,
    name        TEXT NOT NULL COLLATE NOCASE,
    requires_client_authorization INTEGER NOT NULL DEFAULT 1,
    user_metadata TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    request_timeout REAL,
    max_listeners INTEGER,
    multicast   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE rules (
    namespace   TEXT NOT NULL COLLATE NOCASE
                REFERENCES namespaces(name) ON DELETE CASCADE,
    entity      TEXT COLLATE NOCASE,  -- NULL: namespace-level rule
    name        TEXT NOT NULL,
    primary_key TEXT NOT NULL,
    secondary_key TEXT NOT NULL,
    rights      TEXT NOT NULL,        -- comma-separated, canonical order
    created_at  TEXT NOT NULL,
    FOREIGN KEY (namespace, entity)
        REFERENCES hybrid_connections(namespace, name) ON DELETE CASCADE
);
-- ifnull() because UNIQUE treats NULLs as distinct, which would allow duplicate namespace rules.
CREATE UNIQUE INDEX rules_unique ON rules(namespace, ifnull(entity, ''), name);
CREATE INDEX rules_entity ON rules(namespace, entity);
"""

_HC_COLS = ("namespace, name, requires_client_authorization, user_metadata, created_at, updated_at, "
            "request_timeout, max_listeners, multicast")
_RULE_COLS = "namespace, entity, name, primary_key, secondary_key, rights, created_at"


class _Keep:
    """Marker for "leave this setting as it is" where None is a meaningful value."""


KEEP = _Keep()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hc(row: tuple) -> HybridConnection:
    return HybridConnection(row[0], row[1], bool(row[2]), row[3], row[4], row[5], row[6], row[7], bool(row[8]))


def _check_settings(request_timeout: float | None, max_listeners: int | None) -> None:
    if request_timeout is not None and request_timeout < 0:
        raise InvalidName("request timeout must be 0 (no limit) or a positive number of seconds")
    if max_listeners is not None and not 1 <= max_listeners <= 10_000:
        raise InvalidName("max listeners must be between 1 and 10000")


def _rule(row: tuple) -> Rule:
    return Rule(row[0], row[1], row[2], row[3], row[4], tuple(row[5].split(",")), row[6])


def _where_entity(entity: str | None) -> tuple[str, tuple]:
    return ("entity IS NULL", ()) if entity is None else ("entity = ?", (entity,))


class SqliteStore:
    """A Store in one SQLite file, safe to share with other processes (CLI and relay)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit mode: transactions are explicit, so writes can BEGIN IMMEDIATE.
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._version = 0
        self._data_version = self._read_data_version()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        """Create or upgrade the schema; later versions add steps here."""
        with self._write() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = cur.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {current}, newer than this hyrelay "
                    f"supports ({SCHEMA_VERSION}); upgrade hyrelay"
                )
            if current < 1:
                for stmt in _SCHEMA_V1.split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                cur.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    # -- plumbing ---------------------------------------------------------------------

    def _read_data_version(self) -> int:
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def _sync_version(self) -> None:
        # data_version moves only when ANOTHER connection commits; fold it into our counter.
        dv = self._read_data_version()
        if dv != self._data_version:
            self._data_version = dv
            self._version += 1

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """Run a write transaction; IMMEDIATE so check-then-insert is atomic across processes."""
        with self._lock:
            cur = self._conn.cursor()
            before = self._conn.total_changes
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            if self._conn.total_changes != before:
                self._version += 1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._conn.cursor()

    def _ns_name(self, cur: sqlite3.Cursor, name: str) -> str:
        """Return the stored spelling of namespace name, or raise NotFound."""
        row = cur.execute("SELECT name FROM namespaces WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"namespace {name!r} does not exist; create it first")
        return row[0]

    def _hc_row(self, cur: sqlite3.Cursor, namespace: str, name: str) -> tuple:
        ns = self._ns_name(cur, namespace)
        row = cur.execute(
            f"SELECT {_HC_COLS} FROM hybrid_connections WHERE namespace = ? AND name = ?",
            (ns, name),
        ).fetchone()
        if row is None:
            raise NotFound(f"hybrid connection {name!r} does not exist in namespace {ns!r}")
        return row

    def _scope(
        self, cur: sqlite3.Cursor, namespace: str, entity: str | None
    ) -> tuple[str, str | None]:
        """Resolve namespace and entity to their stored spelling."""
        if entity is None:
            return self._ns_name(cur, namespace), None
        row = self._hc_row(cur, namespace, entity)
        return row[0], row[1]

    def _rule_row(
        self, cur: sqlite3.Cursor, ns: str, entity: str | None, name: str
    ) -> tuple | None:
        cond, args = _where_entity(entity)
        return cur.execute(
            f"SELECT {_RULE_COLS} FROM rules WHERE namespace = ? AND {cond} AND name = ?",
            (ns, *args, name),
        ).fetchone()

    def _get_rule(
        self, cur: sqlite3.Cursor, namespace: str, entity: str | None, name: str
    ) -> Rule:
        ns, ent = self._scope(cur, namespace, entity)
        row = self._rule_row(cur, ns, ent, name)
        if row is None:
            where = f"namespace {ns!r}" if ent is None else f"hybrid connection {ent!r}"
            raise NotFound(f"rule {name!r} does not exist on {where}")
        return _rule(row)

    def _insert_rule(
        self, cur: sqlite3.Cursor, namespace: str, entity: str | None, name: str,
        rights: Iterable[str], primary_key: str | None, secondary_key: str | None,
    ) -> Rule:
        validate_rule_name(name)
        rights_t = normalize_rights(rights)
        pk = generate_key() if primary_key is None else validate_key(primary_key)
        sk = generate_key() if secondary_key is None else validate_key(secondary_key)
        ns, ent = self._scope(cur, namespace, entity)
        where = f"namespace {ns!r}" if ent is None else f"hybrid connection {ent!r}"
        if self._rule_row(cur, ns, ent, name) is not None:
            raise AlreadyExists(f"rule {name!r} already exists on {where}; pick another name")
        cond, args = _where_entity(ent)
        count = cur.execute(
            f"SELECT count(*) FROM rules WHERE namespace = ? AND {cond}", (ns, *args)
        ).fetchone()[0]
        if count >= MAX_RULES:
            raise LimitExceeded(
                f"{where} already has {MAX_RULES} rules, the maximum; delete one first"
            )
        rule = Rule(ns, ent, name, pk, sk, rights_t, _now())
        cur.execute(
            f"INSERT INTO rules ({_RULE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ns, ent, name, pk, sk, ",".join(rights_t), rule.created_at),
        )
        return rule

    # -- Store API --------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def version(self) -> int:
        with self._lock:
            self._sync_version()
            return self._version

    def ensure_default(self, namespace: str = DEFAULT_NAMESPACE) -> tuple[Namespace, Rule]:
        validate_namespace_name(namespace)
        with self._write() as cur:
            row = cur.execute(
                "SELECT name, created_at FROM namespaces WHERE name = ?", (namespace,)
            ).fetchone()
            if row is None:
                ns = Namespace(namespace, _now())
                cur.execute("INSERT INTO namespaces VALUES (?, ?)", (ns.name, ns.created_at))
            else:
                ns = Namespace(*row)
            existing = self._rule_row(cur, ns.name, None, ROOT_RULE)
            if existing is not None:
                return ns, _rule(existing)
            return ns, self._insert_rule(cur, ns.name, None, ROOT_RULE, RIGHTS, None, None)

    def list_namespaces(self) -> list[Namespace]:
        with self._read() as cur:
            rows = cur.execute("SELECT name, created_at FROM namespaces ORDER BY name").fetchall()
        return [Namespace(*r) for r in rows]

    def get_namespace(self, name: str) -> Namespace:
        with self._read() as cur:
            row = cur.execute(
                "SELECT name, created_at FROM namespaces WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise NotFound(f"namespace {name!r} does not exist; create it first")
        return Namespace(*row)

    def create_namespace(self, name: str, *, root_rule: bool = True) -> Namespace:
        """Create a namespace; like Azure, add RootManageSharedAccessKey unless root_rule=False."""
        validate_namespace_name(name)
        with self._write() as cur:
            row = cur.execute("SELECT name FROM namespaces WHERE name = ?", (name,)).fetchone()
            if row is not None:
                raise AlreadyExists(f"namespace {row[0]!r} already exists; pick another name")
            ns = Namespace(name, _now())
            cur.execute("INSERT INTO namespaces VALUES (?, ?)", (ns.name, ns.created_at))
            if root_rule:
                self._insert_rule(cur, ns.name, None, ROOT_RULE, RIGHTS, None, None)
        return ns

    def delete_namespace(self, name: str) -> None:
        with self._write() as cur:
            cur.execute("DELETE FROM namespaces WHERE name = ?", (self._ns_name(cur, name),))

    def list_hcs(self, namespace: str) -> list[HybridConnection]:
        with self._read() as cur:
            ns = self._ns_name(cur, namespace)
            rows = cur.execute(
                f"SELECT {_HC_COLS} FROM hybrid_connections WHERE namespace = ? ORDER BY name",
                (ns,),
            ).fetchall()
        return [_hc(r) for r in rows]

    def get_hc(self, namespace: str, name: str) -> HybridConnection:
        with self._read() as cur:
            return _hc(self._hc_row(cur, namespace, name))

    def create_hc(
        self, namespace: str, name: str, *,
        requires_client_authorization: bool = True, user_metadata: str = "",
        request_timeout: float | None = None, max_listeners: int | None = None, multicast: bool = False,
    ) -> HybridConnection:
        validate_hc_name(name)
        _check_settings(request_timeout, max_listeners)
        with self._write() as cur:
            ns = self._ns_name(cur, namespace)
            row = cur.execute(
                "SELECT name FROM hybrid_connections WHERE namespace = ? AND name = ?", (ns, name)
            ).fetchone()
            if row is not None:
                raise AlreadyExists(
                    f"hybrid connection {row[0]!r} already exists in namespace {ns!r} "
                    "(names are case-insensitive); pick another name"
                )
            count = cur.execute(
                "SELECT count(*) FROM hybrid_connections WHERE namespace = ?", (ns,)
            ).fetchone()[0]
            if count >= MAX_HCS:
                raise LimitExceeded(
                    f"namespace {ns!r} already has {MAX_HCS} hybrid connections; delete one first"
                )
            now = _now()
            hc = HybridConnection(
                ns, name, bool(requires_client_authorization), user_metadata, now, now,
                request_timeout, max_listeners, bool(multicast),
            )
            cur.execute(
                f"INSERT INTO hybrid_connections ({_HC_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ns, name, int(hc.requires_client_authorization), user_metadata, now, now,
                 request_timeout, max_listeners, int(hc.multicast)),
            )
        return hc

    def update_hc(
        self, namespace: str, name: str, *,
        requires_client_authorization: bool | None = None, user_metadata: str | None = None,
        request_timeout: float | None | _Keep = KEEP, max_listeners: int | None | _Keep = KEEP,
        multicast: bool | None = None,
    ) -> HybridConnection:
        """Change the given settings; ``KEEP`` (the default) leaves one as it is, None resets it."""
        with self._write() as cur:
            old = _hc(self._hc_row(cur, namespace, name))
            changes: dict[str, object] = {"updated_at": _now()}
            if requires_client_authorization is not None:
                changes["requires_client_authorization"] = bool(requires_client_authorization)
            if user_metadata is not None:
                changes["user_metadata"] = user_metadata
            if not isinstance(request_timeout, _Keep):
                changes["request_timeout"] = request_timeout
            if not isinstance(max_listeners, _Keep):
                changes["max_listeners"] = max_listeners
            if multicast is not None:
                changes["multicast"] = bool(multicast)
            new = replace(old, **changes)  # type: ignore[arg-type]
            _check_settings(new.request_timeout, new.max_listeners)
            cur.execute(
                "UPDATE hybrid_connections SET requires_client_authorization = ?, user_metadata = ?, "
                "updated_at = ?, request_timeout = ?, max_listeners = ?, multicast = ? "
                "WHERE namespace = ? AND name = ?",
                (int(new.requires_client_authorization), new.user_metadata, new.updated_at,
                 new.request_timeout, new.max_listeners, int(new.multicast), new.namespace, new.name),
            )
        return new

    def delete_hc(self, namespace: str, name: str) -> None:
        with self._write() as cur:
            row = self._hc_row(cur, namespace, name)
            cur.execute(
                "DELETE FROM hybrid_connections WHERE namespace = ? AND name = ?", (row[0], row[1])
            )

    def list_rules(self, namespace: str, entity: str | None = None) -> list[Rule]:
        with self._read() as cur:
            ns, ent = self._scope(cur, namespace, entity)
            cond, args = _where_entity(ent)
            rows = cur.execute(
                f"SELECT {_RULE_COLS} FROM rules WHERE namespace = ? AND {cond} ORDER BY name",
                (ns, *args),
            ).fetchall()
        return [_rule(r) for r in rows]

    def get_rule(self, namespace: str, entity: str | None, name: str) -> Rule:
        with self._read() as cur:
            return self._get_rule(cur, namespace, entity, name)

    def create_rule(
        self, namespace: str, entity: str | None, name: str, rights: Iterable[str], *,
        primary_key: str | None = None, secondary_key: str | None = None,
    ) -> Rule:
        with self._write() as cur:
            return self._insert_rule(
                cur, namespace, entity, name, rights, primary_key, secondary_key
            )

    def update_rule(
        self, namespace: str, entity: str | None, name: str, rights: Iterable[str]
    ) -> Rule:
        """Replace a rule's rights; its keys stay, so tokens it signed keep working."""
        rights_t = normalize_rights(rights)
        with self._write() as cur:
            rule = self._get_rule(cur, namespace, entity, name)
            cond, args = _where_entity(rule.entity)
            cur.execute(
                f"UPDATE rules SET rights = ? WHERE namespace = ? AND {cond} AND name = ?",
                (",".join(rights_t), rule.namespace, *args, rule.name),
            )
        return replace(rule, rights=rights_t)

    def delete_rule(self, namespace: str, entity: str | None, name: str) -> None:
        with self._write() as cur:
            rule = self._get_rule(cur, namespace, entity, name)
            cond, args = _where_entity(rule.entity)
            cur.execute(
                f"DELETE FROM rules WHERE namespace = ? AND {cond} AND name = ?",
                (rule.namespace, *args, rule.name),
            )

    def regenerate_key(
        self, namespace: str, entity: str | None, name: str,
        which: Literal["primary", "secondary"], key: str | None = None,
    ) -> Rule:
        """Replace one key; also accepts ARM's keyType spelling ('PrimaryKey', 'SecondaryKey')."""
        which_n = str(which).lower().removesuffix("key")
        if which_n not in ("primary", "secondary"):
            raise StoreError(f"unknown key {which!r}: use 'primary' or 'secondary'")
        new_key = generate_key() if key is None else validate_key(key)
        column = f"{which_n}_key"  # safe: one of two fixed names
        with self._write() as cur:
            rule = self._get_rule(cur, namespace, entity, name)
            cond, args = _where_entity(rule.entity)
            cur.execute(
                f"UPDATE rules SET {column} = ? WHERE namespace = ? AND {cond} AND name = ?",
                (new_key, rule.namespace, *args, rule.name),
            )
        return replace(rule, **{column: new_key})

    def snapshot(self) -> Snapshot:
        with self._lock:
            cur = self._conn.cursor()
            # One read transaction so rows and data_version describe the same database state.
            cur.execute("BEGIN")
            try:
                namespaces = [
                    Namespace(*r) for r in cur.execute("SELECT name, created_at FROM namespaces")
                ]
                hcs = [_hc(r) for r in cur.execute(f"SELECT {_HC_COLS} FROM hybrid_connections")]
                rules = [_rule(r) for r in cur.execute(f"SELECT {_RULE_COLS} FROM rules")]
                self._sync_version()
            finally:
                cur.execute("COMMIT")
            return Snapshot(self._version, namespaces, hcs, rules)
