"""Plain HTTP on the relay's port: health, and every other path relayed to a listener."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..protocol.errors import RelayError
from . import admin, observability
from .dispatch import utc_timestamp

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["make_app", "error_json"]

RELAY_KEY = web.AppKey("relay", object)


def error_json(err: RelayError, tracker: str = "") -> web.Response:
    """The JSON error body every non-WebSocket failure gets."""
    reason = err.reason(tracker, utc_timestamp())
    return web.json_response({"error": {"code": err.code, "message": reason, "trackingId": err.tracking_id}},
                             status=err.status, reason=reason, headers={"TrackingId": err.tracking_id})


async def health(request: web.Request) -> web.Response:
    relay: Relay = request.app[RELAY_KEY]  # type: ignore[assignment]
    listeners = sum(len(relay.router.listeners(k)) for k in relay.router.hc_keys())
    return web.json_response({
        "status": "ok", "namespace": relay.namespace, "listeners": listeners,
        "connections": sum(len(s) for s in relay.counters.active.values()),
        "pendingRendezvous": relay.router.pending_count,
    })


async def relay_http(request: web.Request) -> web.StreamResponse:
    """Every other path: a relayed HTTP request."""
    relay: Relay = request.app[RELAY_KEY]  # type: ignore[assignment]
    if (own := admin.intercept(request, relay)) is not None:  # unrouted /$admin paths, runtime GET (§6.2)
        return own
    return await relay.http.handle(request, error_json)


def make_app(relay: "Relay") -> web.Application:
    app = web.Application()
    app[RELAY_KEY] = relay
    app.router.add_get("/$health", health)
    admin.setup(app, relay)
    observability.setup(app, relay)
    # Service endpoints under /$... go here, before the catch-all route that relays everything else.
    app.router.add_route("*", "/{tail:.*}", relay_http)
    return app
