"""Records, errors and validation rules shared by every store implementation."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

RIGHTS = ("Listen", "Send", "Manage")
DEFAULT_NAMESPACE = "hyrelay"
ROOT_RULE = "RootManageSharedAccessKey"
MAX_RULES = 12  # per namespace and per entity (spec §5.4, §7.1)
MAX_HCS = 10_000  # relay endpoints per namespace (spec §7.1)


@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace; timestamps are ISO-8601 UTC strings ending in 'Z'."""

    name: str
    created_at: str


@dataclass(frozen=True, slots=True)
class HybridConnection:
    """A hybrid connection inside a namespace."""

    namespace: str
    name: str
    requires_client_authorization: bool = True
    user_metadata: str = ""
    created_at: str = ""
    updated_at: str = ""
    #: Seconds a listener has to answer a relayed HTTP request; None: the relay's default, 0: no limit.
    request_timeout: float | None = None
    #: Listeners allowed at once; None: the relay's default.
    max_listeners: int | None = None
    #: Deliver every request to all listeners instead of one (the RPC relay's events).
    multicast: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    """A SAS authorization rule; entity None means namespace-level."""

    namespace: str
    entity: str | None
    name: str
    primary_key: str
    secondary_key: str
    rights: tuple[str, ...]
    created_at: str = ""


class StoreError(Exception):
    """Base class; the message tells the user what to change."""


class NotFound(StoreError):
    """The namespace, hybrid connection or rule does not exist."""


class AlreadyExists(StoreError):
    """An object with that name (ignoring case where Azure does) exists."""


class InvalidName(StoreError):
    """A name or another input value is malformed."""


class InvalidRights(InvalidName):
    """Rights are empty or contain an unknown right."""


class InvalidKey(InvalidName):
    """An explicitly supplied SAS key is malformed."""


class LimitExceeded(StoreError):
    """A quota from spec §7.1 would be exceeded."""


def generate_key() -> str:
    """Return a fresh 256-bit key as standard base64 (44 chars), as Azure issues them."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


_NS_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{4,48}[A-Za-z0-9]")
_HC_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_RULE_RE = re.compile(r"[A-Za-z0-9._-]{1,256}")
# ';' and whitespace would break connection strings, which carry the key verbatim.
_KEY_RE = re.compile(r"[!-:<-~]{1,256}")


def validate_namespace_name(name: str) -> str:
    """Raise InvalidName unless name is a valid namespace name; return it."""
    if not isinstance(name, str) or not _NS_RE.fullmatch(name):
        raise InvalidName(
            f"invalid namespace name {name!r}: use 6-50 letters, digits or hyphens, "
            "starting with a letter and ending with a letter or digit"
        )
    return name


def validate_hc_name(name: str) -> str:
    """Raise InvalidName unless name is a valid hybrid connection name; return it."""
    if not isinstance(name, str) or not 1 <= len(name) <= 260:
        raise InvalidName(f"invalid hybrid connection name {name!r}: use 1-260 characters")
    if name.startswith("$"):
        raise InvalidName(f"invalid hybrid connection name {name!r}: must not start with '$'")
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise InvalidName(
            f"invalid hybrid connection name {name!r}: "
            "no leading, trailing or doubled '/' (empty path segment)"
        )
    for segment in name.split("/"):
        if segment in (".", ".."):
            raise InvalidName(
                f"invalid hybrid connection name {name!r}: '.' and '..' are not allowed as segments"
            )
        if not _HC_SEGMENT_RE.fullmatch(segment):
            raise InvalidName(
                f"invalid hybrid connection name {name!r}: use letters, digits, '.', '-', '_' "
                "and '/' between segments"
            )
    return name


def validate_rule_name(name: str) -> str:
    """Raise InvalidName unless name is a valid rule (key) name; return it."""
    if not isinstance(name, str) or not _RULE_RE.fullmatch(name):
        raise InvalidName(
            f"invalid rule name {name!r}: use 1-256 letters, digits, '.', '-' or '_'"
        )
    return name


def validate_key(key: str) -> str:
    """Raise InvalidKey unless key is usable as a SAS key; return it."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise InvalidKey(
            "invalid key: use 1-256 printable ASCII characters without spaces or ';' "
            "(omit the key to generate one)"
        )
    return key


def normalize_rights(rights: Iterable[str]) -> tuple[str, ...]:
    """Return rights deduplicated in canonical order; input is case-insensitive.

    A plain string is read as a comma-separated list, so "listen,send" works from a CLI.
    """
    if isinstance(rights, str):
        rights = rights.split(",")
    canonical = {r.lower(): r for r in RIGHTS}
    wanted: set[str] = set()
    for right in rights:
        key = str(right).strip().lower()
        if key not in canonical:
            raise InvalidRights(f"unknown right {right!r}: use Listen, Send or Manage")
        wanted.add(canonical[key])
    if not wanted:
        raise InvalidRights("rights must not be empty: give at least one of Listen, Send, Manage")
    return tuple(r for r in RIGHTS if r in wanted)
