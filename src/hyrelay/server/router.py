"""Which listener gets a sender, and where a rendezvous lands: the in-process router.

A Redis router for cluster mode will implement the same methods.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["Router", "Routable"]


class Routable(Protocol):
    listener_id: str


L = TypeVar("L", bound=Routable)
P = TypeVar("P")


class Router(Generic[L, P]):
    """Listeners per hybrid connection, and pending rendezvous by their secret key."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[L]] = {}
        self._pending: dict[str, P] = {}

    def add_listener(self, hc_key: str, listener: L, limit: int) -> bool:
        """Register *listener*; False if the hybrid connection already has *limit* listeners."""
        group = self._listeners.setdefault(hc_key, [])
        if len(group) >= limit:
            return False
        group.append(listener)
        return True

    def remove_listener(self, hc_key: str, listener: L) -> None:
        group = self._listeners.get(hc_key)
        if group and listener in group:
            group.remove(listener)
            if not group:
                del self._listeners[hc_key]

    def listeners(self, hc_key: str) -> list[L]:
        return list(self._listeners.get(hc_key, ()))

    def hc_keys(self) -> Iterable[str]:
        return list(self._listeners)

    def choose(self, hc_key: str, allowed: set[str] | None = None,
               disallowed: set[str] | None = None) -> list[L]:
        """Candidate listeners, filtered by Allowed/DisallowedListeners ids, starting at a random one.

        The first is uniformly random (it is the one that gets the work); the rest follow in
        order, which is all a fallback needs and cheaper than a shuffle on every request.
        """
        group = self._listeners.get(hc_key)
        if not group:
            return []
        if allowed is not None or disallowed:
            group = [lst for lst in group
                     if (allowed is None or lst.listener_id.lower() in allowed)
                     and (not disallowed or lst.listener_id.lower() not in disallowed)]
        if len(group) < 2:
            return list(group)
        start = int(random.random() * len(group))
        return group[start:] + group[:start]

    def add_pending(self, key: str, pending: P) -> None:
        self._pending[key] = pending

    def take_pending(self, key: str) -> P | None:
        """Remove and return the rendezvous for *key*: each address works once."""
        return self._pending.pop(key, None)

    def pending_items(self) -> list[tuple[str, P]]:
        """A copy of every pending rendezvous, by secret."""
        return list(self._pending.items())

    def drop_pending(self, key: str) -> None:
        self._pending.pop(key, None)

    @property
    def pending_count(self) -> int:
        return len(self._pending)
