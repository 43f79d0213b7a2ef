"""``GET /$admin/events``: the relay's events as a Server-Sent Events stream.

A Manage token is required: in the ``ServiceBusAuthorization`` or ``Authorization`` header, or
as ``?token=`` for browsers' EventSource, which cannot set headers. ``?hc=NAME`` (repeatable)
limits the stream to those hybrid connections.

The stream sends, as ``event: <type>`` with one line of JSON as ``data``:

* ``snapshot`` first: every hybrid connection with its listeners online and open connections;
* every Observer event (``listener_online``, ``connection_closed``, ``http_request``, ...);
* ``stats`` every second: namespace totals (listeners, open connections, bytes relayed) and, per
  hybrid connection, the same numbers: for every HC in the first one, later only for those whose
  numbers changed, so an idle namespace with many HCs costs little;
* ``dropped`` when a slow client fell behind and older events were discarded;
* a ``: ping`` comment every 15 seconds, so proxies keep an idle stream open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..protocol.errors import RelayError
from . import http as _http
from .metrics import open_bytes
from .observe import Event, HcStats

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["EVENTS_PATH", "EventHub", "Subscription", "setup"]

_log = logging.getLogger("hyrelay.server")

EVENTS_PATH = "/$admin/events"
TARGET = ("$admin", "events")
#: Events kept for one client that reads slower than the relay produces them.
QUEUE_LIMIT = 1000
STATS_INTERVAL = 1.0
HEARTBEAT_INTERVAL = 15.0
#: A client that takes longer than this to accept one write is cut off (it stopped reading).
WRITE_TIMEOUT = 30.0
_EMPTY = HcStats()


class Subscription:
    """One client's bounded queue of events, filled by the Observer and drained by its stream."""

    def __init__(self, names: frozenset[str] | None, limit: int) -> None:
        self.names = names
        self.limit = limit
        self.queue: deque[Event] = deque()
        self.dropped = 0
        self.closed = False
        self.wake = asyncio.Event()

    def wants(self, hc: str) -> bool:
        # Events about no particular HC (rules_changed) concern every stream: they may also end its
        # own authorization.
        return self.names is None or not hc or hc.lower() in self.names

    def __call__(self, event: Event) -> None:
        if not self.wants(event.hc):
            return
        if len(self.queue) >= self.limit:
            # Drop the oldest rather than grow: the client learns how many it missed.
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(event)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


def frame(event: str, data: Any) -> bytes:
    """One SSE message; the JSON has no newlines, so it fits one ``data:`` line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _outcomes(counts: dict[str, int]) -> dict[str, int]:
    # camelCase like the rest of the JSON the admin API speaks.
    return {"success": counts.get("success", 0), "clientError": counts.get("client_error", 0),
            "serverError": counts.get("server_error", 0)}


def hc_stats(relay: "Relay", names: frozenset[str] | None) -> list[dict[str, Any]]:
    """Live numbers per hybrid connection (those in *names*, or all)."""
    rows = []
    for hc in relay.snapshot.hcs(relay.namespace):
        if names is not None and hc.name.lower() not in names:
            continue
        key = relay.hc_key(hc.name)
        stats = relay.observer.stats.get(hc.name, _EMPTY)
        rows.append({
            "name": hc.name,
            "listeners": len(relay.router.listeners(key)),
            "connections": len(relay.counters.active.get(key, ())),
            "bytes": stats.bytes_transferred + open_bytes(relay, key),
            "senderConnections": _outcomes(stats.sender_connections),
            "listenerConnections": _outcomes(stats.listener_connections),
            "httpRequests": sum(stats.http_requests.values()),
        })
    return rows


def snapshot(relay: "Relay", names: frozenset[str] | None) -> dict[str, Any]:
    """What a new client needs before events make sense: HCs and who is online."""
    hcs = []
    for hc in relay.snapshot.hcs(relay.namespace):
        if names is not None and hc.name.lower() not in names:
            continue
        key = relay.hc_key(hc.name)
        hcs.append({
            "name": hc.name,
            "requiresClientAuthorization": hc.requires_client_authorization,
            "listeners": [{"listener": ch.listener_id, "remote": f"{ch.peer[0]}:{ch.peer[1]}", "since": ch.since}
                          for ch in relay.router.listeners(key)],
            "connections": len(relay.counters.active.get(key, ())),
        })
    return {"namespace": relay.namespace, "time": time.time(), "hcs": hcs}


def _token(request: web.Request) -> str | None:
    # request.query is URL-decoded once, which yields the token with sr and sig still encoded.
    return (request.headers.get("ServiceBusAuthorization") or request.headers.get("Authorization")
            or request.query.get("token"))


class EventHub:
    """The open event streams of one relay."""

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.subscriptions: set[Subscription] = set()

    def close_all(self) -> None:
        for sub in list(self.subscriptions):
            sub.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        relay = self.relay
        token_text = _token(request)
        try:
            token = relay.authorize_manage(token_text, TARGET)
        except RelayError as err:
            return _http.error_json(err, f"{relay.namespace}:$admin/events")
        names = frozenset(n.lower() for n in request.query.getall("hc", []) if n) or None
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx would otherwise hold events back
        })
        await response.prepare(request)
        sub = Subscription(names, QUEUE_LIMIT)
        # The snapshot and the subscription happen with no await between them: every event
        # after the snapshot reaches the client, none before it does.
        first = frame("snapshot", snapshot(relay, sub.names))
        unsubscribe = relay.observer.subscribe(sub)
        self.subscriptions.add(sub)
        # A stream outlives neither its token nor the rule that signed it.
        expires_at = token.expires_at + relay.config.clock_skew
        _log.info("event=events_subscribed filter=%s", ",".join(sorted(names)) if names else "*")
        try:
            await self._pump(response, sub, first, token_text, expires_at)
        except (TimeoutError, ConnectionError):
            pass  # the client went away or stopped reading
        finally:
            unsubscribe()
            self.subscriptions.discard(sub)
            _log.info("event=events_unsubscribed dropped=%s", sub.dropped)
        return response

    async def _pump(self, response: web.StreamResponse, sub: Subscription, first: bytes,
                    token_text: str | None, expires_at: float) -> None:
        relay = self.relay
        loop = asyncio.get_running_loop()

        async def send(data: bytes) -> None:
            await asyncio.wait_for(response.write(data), WRITE_TIMEOUT)

        await send(b"retry: 3000\n\n" + first)
        now = loop.time()
        next_stats, next_ping = now + STATS_INTERVAL, now + HEARTBEAT_INTERVAL
        sent: dict[str, dict[str, Any]] = {}  # the rows this client has, to send only what changed
        while not sub.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), max(0.0, min(next_stats, next_ping) - loop.time()))
            sub.wake.clear()
            chunks: list[bytes] = []
            if sub.dropped:
                chunks.append(frame("dropped", {"count": sub.dropped}))
                sub.dropped = 0
            recheck = False
            while sub.queue:
                event = sub.queue.popleft()
                recheck |= event.type == "rules_changed"
                chunks.append(frame(event.type, event.to_dict()))
            if time.time() > expires_at or (recheck and not self._still_valid(token_text)):
                chunks.append(frame("expired", {"message": "The token expired or its rule changed; "
                                                           "reconnect with a new token"}))
                sub.closed = True
            now = loop.time()
            if now >= next_stats:
                rows = hc_stats(relay, sub.names)
                changed = [row for row in rows if sent.get(row["name"]) != row]
                sent = {row["name"]: row for row in rows}
                totals = {k: sum(row[k] for row in rows) for k in ("listeners", "connections", "bytes")}
                chunks.append(frame("stats", {"time": time.time(), "totals": totals, "hcs": changed}))
                next_stats = now + STATS_INTERVAL
            if now >= next_ping:
                chunks.append(b": ping\n\n")
                next_ping = now + HEARTBEAT_INTERVAL
            if chunks:
                await send(b"".join(chunks))

    def _still_valid(self, token_text: str | None) -> bool:
        try:
            self.relay.authorize_manage(token_text, TARGET)
        except RelayError:
            return False
        return True


def setup(app: web.Application, relay: "Relay") -> EventHub:
    """Serve ``GET /$admin/events`` for *relay*; streams end when the app shuts down."""
    hub = EventHub(relay)

    async def on_shutdown(_: web.Application) -> None:
        hub.close_all()

    app.router.add_get(EVENTS_PATH, hub.handle, allow_head=False)  # a HEAD would hold a stream open
    app.on_shutdown.append(on_shutdown)
    return hub
