"""Which handshake headers travel to the listener (spec §2.3, §4.2)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AUTH_HEADERS", "connect_headers"]

#: Auth material never reaches a listener.
AUTH_HEADERS = frozenset({"servicebusauthorization"})


def connect_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Sender headers for ``accept.connectHeaders``: original casing, auth removed, repeats joined."""
    result: dict[str, str] = {}
    index: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in AUTH_HEADERS:
            continue
        if lower in index:
            key = index[lower]
            result[key] = f"{result[key]}, {value}"
        else:
            index[lower] = name
            result[name] = value
    return result
