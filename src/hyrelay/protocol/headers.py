"""Which headers travel between sender and listener (spec §2.3, §4.2, §4.11)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["AUTH_HEADERS", "HOP_BY_HOP", "MULTICAST_HEADER", "connect_headers", "request_headers",
           "response_headers", "ResponseHeaders", "add_via"]

#: Marks a request the relay delivered to every listener of a multicast hybrid connection: its
#: answer is read by nobody, so a listener need not send one.
MULTICAST_HEADER = "Hyrelay-Multicast"

#: Auth material never reaches a listener.
AUTH_HEADERS = frozenset({"servicebusauthorization"})

#: Connection-level headers (RFC 7230) the relay handles itself, in both directions.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "close", "content-length", "expect", "proxy-authenticate", "proxy-authorization",
})


_NOT_RELAYED = AUTH_HEADERS | HOP_BY_HOP
_NOT_RELAYED_WITH_AUTHORIZATION = _NOT_RELAYED | {"authorization"}


def _joined(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> dict[str, str]:
    """Headers as a flat map: original casing of the first occurrence, repeats joined with ', '.

    Headers that a ``Connection`` header names are dropped too when *drop* holds ``connection``
    (RFC 7230 §6.1: they are hop-by-hop; once Connection is gone the listener could not tell).
    """
    result: dict[str, str] = {}
    index: dict[str, str] = {}
    named: set[str] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in drop:
            if lower == "connection":
                named = (named or set()) | {token.strip().lower() for token in value.split(",")}
            continue
        if lower in index:
            key = index[lower]
            result[key] = f"{result[key]}, {value}"
        else:
            index[lower] = name
            result[name] = value
    if named:
        for lower in named & index.keys():
            del result[index[lower]]
    return result


def connect_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Sender headers for ``accept.connectHeaders``: everything but auth (the key included, §2.3)."""
    return _joined(headers, AUTH_HEADERS)


def request_headers(headers: Iterable[tuple[str, str]], *, strip_authorization: bool) -> dict[str, str]:
    """Sender headers for a relayed HTTP request: no auth material, no hop-by-hop headers (§4.2, §4.11).

    ``Authorization`` is removed only when the relay evaluated it (*strip_authorization*).
    """
    return _joined(headers, _NOT_RELAYED_WITH_AUTHORIZATION if strip_authorization else _NOT_RELAYED)


class ResponseHeaders(NamedTuple):
    """A listener's response headers, sorted out in one pass for the relay's response head."""

    #: What passes on: everything but the hop-by-hop headers the relay frames itself, and Via.
    kept: list[tuple[str, str]]
    #: The listener's own Via, which the relay extends.
    via: str | None
    #: The listener's Content-Length: dropped, but what a HEAD answer may repeat.
    content_length: str | None
    has_date: bool


def response_headers(headers: dict[str, str]) -> ResponseHeaders:
    """Sort a listener's response headers (see :class:`ResponseHeaders`)."""
    kept: list[tuple[str, str]] = []
    via = length = None
    dated = False
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == "content-length":
                length = value
        elif lower == "via":
            via = value
        else:
            dated = dated or lower == "date"
            kept.append((name, value))
    return ResponseHeaders(kept, via, length, dated)


def add_via(existing: str | None, host: str) -> str:
    """Append this relay to a ``Via`` header (RFC 7230 §5.7.1)."""
    hop = f"1.1 {host}"
    return f"{existing}, {hop}" if existing else hop
