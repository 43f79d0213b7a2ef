"""Where a client talks to: an address or a connection string, resolved once (spec §1.2, §6.3)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from ..protocol.addresses import filter_query, parse_hc_target
from ..protocol.errors import BadRequest
from ..protocol.sas import ConnectionString, parse_connection_string, token_audience

__all__ = ["Endpoint", "resolve", "is_connection_string"]

_SECURE = {"wss": "wss", "sb": "wss", "https": "wss"}
_PLAIN = {"ws": "ws", "http": "ws"}
_URL_START = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A hybrid connection's WebSocket base, its URL-encoded path and any app query of the address."""

    ws_base: str
    raw_path: str
    query: str = ""

    @property
    def entity(self) -> str:
        """The hybrid connection's name, decoded."""
        return "/".join(unquote(s) for s in self.raw_path.split("/") if s)

    @property
    def segments(self) -> int:
        return len([s for s in self.raw_path.split("/") if s])

    @property
    def audience(self) -> str:
        """The URI a token for this hybrid connection is issued for (``http://host[:port]/name``)."""
        return token_audience(f"{self.ws_base}/$hc/{self.raw_path}")

    def __str__(self) -> str:
        return f"{self.ws_base}/$hc/{self.raw_path}"


def is_connection_string(text: str) -> bool:
    """True for ``Endpoint=...;...``; an address starts with its scheme instead."""
    return _URL_START.match(text) is None and "endpoint" in text.lower() and "=" in text


def _pick_entity(found: str | None, given: str | None) -> str:
    found = (found or "").strip("/")
    given = (given or "").strip("/")
    if found and given and found.lower() != given.lower():
        raise BadRequest(f"Two hybrid connection names were given: '{found}' and '{given}'")
    name = found or given
    if not name:
        raise BadRequest("No hybrid connection name: give it in the address, as EntityPath or as entity=")
    return name


def resolve(address_or_connection_string: str, entity: str | None) -> tuple[Endpoint, ConnectionString | None]:
    """Resolve ``ws://host:port/$hc/name``, ``sb://ns/name`` or a connection string.

    Raises:
        BadRequest: unknown scheme, no entity name, or conflicting names.
    """
    text = address_or_connection_string.strip()
    if is_connection_string(text):
        cs = parse_connection_string(text)
        name = _pick_entity(cs.entity_path, entity)
        return Endpoint(cs.ws_base, quote(name, safe="/")), cs
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    ws_scheme = _SECURE.get(scheme) or _PLAIN.get(scheme)
    if ws_scheme is None or not parts.netloc:
        raise BadRequest(f"'{text}' is neither a connection string nor a ws://, wss://, sb:// or http(s):// address")
    target = parse_hc_target(parts.path)
    raw_path = target.raw_path if target is not None else parts.path.lstrip("/")
    raw_path = raw_path.strip("/")
    name = _pick_entity(unquote(raw_path) if raw_path else None, entity)
    if not raw_path:
        raw_path = quote(name, safe="/")
    return Endpoint(f"{ws_scheme}://{parts.netloc}", raw_path, filter_query(parts.query)), None
