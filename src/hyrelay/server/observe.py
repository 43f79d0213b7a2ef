"""What the relay reports about itself: per-HC counters and a stream of events.

The relay calls these hooks at connection and request boundaries, never per frame, so
observability costs nothing on the data path. Metrics, the event stream and the dashboard
read from here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Event", "HcStats", "Observer"]

_log = logging.getLogger("hyrelay.server")


@dataclass(slots=True)
class Event:
    """One thing that happened, as the event stream sends it."""

    type: str
    hc: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class HcStats:
    """Counters of one hybrid connection, named after Azure Relay's metrics."""

    listener_connections: dict[str, int] = field(default_factory=lambda: {"success": 0, "client_error": 0,
                                                                          "server_error": 0})
    sender_connections: dict[str, int] = field(default_factory=lambda: {"success": 0, "client_error": 0,
                                                                        "server_error": 0})
    listener_disconnects: int = 0
    sender_disconnects: int = 0
    bytes_transferred: int = 0
    http_requests: dict[int, int] = field(default_factory=dict)


def _result(status: int) -> str:
    return "server_error" if status >= 500 else "client_error"


class Observer:
    """Counters per hybrid connection, plus subscribers that receive every event."""

    def __init__(self) -> None:
        self.stats: dict[str, HcStats] = {}
        self._subscribers: list[Callable[[Event], None]] = []
        self._http_observers: list[Callable[[str, str, int, float], None]] = []

    def hc(self, name: str) -> HcStats:
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = HcStats()
        return stats

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call *callback* with every event; returns the function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def on_http(self, callback: Callable[[str, str, int, float], None]) -> None:
        """Call *callback(hc, method, status, seconds)* after every relayed HTTP request."""
        self._http_observers.append(callback)

    def emit(self, type: str, hc: str, **data: Any) -> None:
        if not self._subscribers:
            return
        event = Event(type, hc, data)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                _log.exception("event=observer_failed type=%s", type)

    # -- hooks the relay calls ------------------------------------------------------------------
    def listener_online(self, hc: str, listener_id: str, peer: tuple[str, int]) -> None:
        self.hc(hc).listener_connections["success"] += 1
        self.emit("listener_online", hc, listener=listener_id, remote=f"{peer[0]}:{peer[1]}")

    def listener_offline(self, hc: str, listener_id: str) -> None:
        # Looked up, not created: a deleted HC's last listeners must not bring its counters back.
        stats = self.stats.get(hc)
        if stats is not None:
            stats.listener_disconnects += 1
        self.emit("listener_offline", hc, listener=listener_id)

    def upgrade_failed(self, action: str, hc: str | None, status: int, reason: str) -> None:
        if hc is not None and action in ("listen", "connect"):
            stats = self.hc(hc)
            target = stats.listener_connections if action == "listen" else stats.sender_connections
            target[_result(status)] += 1
        self.emit("upgrade_failed", hc or "", action=action, status=status, reason=reason)

    def connection_opened(self, hc: str, connection_id: str, listener_id: str) -> None:
        self.hc(hc).sender_connections["success"] += 1
        self.emit("connection_opened", hc, connection=connection_id, listener=listener_id)

    def connection_closed(self, hc: str, connection_id: str, nbytes: int) -> None:
        stats = self.stats.get(hc)
        if stats is not None:
            stats.sender_disconnects += 1
            stats.bytes_transferred += nbytes
        self.emit("connection_closed", hc, connection=connection_id, bytes=nbytes)

    def http_request(self, hc: str, method: str, status: int, seconds: float, nbytes: int) -> None:
        stats = self.stats.get(hc) or self.hc(hc)  # per request: the call only for a new name
        stats.http_requests[status] = stats.http_requests.get(status, 0) + 1
        stats.bytes_transferred += nbytes
        for callback in self._http_observers:
            try:
                callback(hc, method, status, seconds)
            except Exception:  # an observer must never break the request it observes
                _log.exception("event=observer_failed type=http_request")
        if self._subscribers:  # per request: build the event only for someone
            self.emit("http_request", hc, method=method, status=status, ms=round(seconds * 1000, 2), bytes=nbytes)

    def store_changed(self, what: str, hc: str = "", **data: Any) -> None:
        self.emit(what, hc, **data)
