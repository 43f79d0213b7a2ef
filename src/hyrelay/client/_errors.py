"""Turn a refused WebSocket upgrade into the RelayError the relay meant (spec §2.1, §3.3)."""

from __future__ import annotations

import re

from websockets.exceptions import InvalidHandshake, InvalidStatus

from ..protocol.errors import (BadGateway, BadRequest, EndpointNotFound, Forbidden, GatewayTimeout, Gone,
                               HeadersTooLarge, InternalError, QuotaExceeded, RelayError, RequestTooLarge,
                               Unauthorized)

__all__ = ["error_from_status", "error_from_handshake"]

_BY_STATUS: dict[int, type[RelayError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: EndpointNotFound,
    408: GatewayTimeout, 410: Gone, 413: RequestTooLarge, 431: HeadersTooLarge,
    500: InternalError, 502: BadGateway, 504: GatewayTimeout,
}
_TRACKING = re.compile(r"TrackingId:\s*([^,\s]+)")


def error_from_status(status: int, reason: str, tracking_id: str | None = None) -> RelayError:
    """The RelayError for *status*, its message the relay's reason phrase, its tracking id the relay's."""
    cls = _BY_STATUS.get(status, RelayError)
    if cls is Forbidden and "MaximumListenersPerEndpoint" in reason:
        cls = QuotaExceeded
    if tracking_id is None:
        found = _TRACKING.search(reason)
        tracking_id = found.group(1) if found else None
    err = cls(reason or f"HTTP {status}", tracking_id=tracking_id)
    # Unmapped codes (and 408 as a timeout) keep the status the relay actually sent.
    err.status = status
    return err


def error_from_handshake(exc: InvalidHandshake) -> RelayError:
    """Map a failed upgrade; a non-101 answer keeps its status and reason phrase."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return error_from_status(response.status_code, response.reason_phrase,
                                 response.headers.get("TrackingId"))
    return BadGateway(f"The relay answered the WebSocket upgrade incorrectly: {exc}")
