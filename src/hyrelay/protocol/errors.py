"""One vocabulary for every failure a relay user can see.

Each error knows its HTTP status (for handshakes and relayed HTTP) and its WebSocket close code
(for established sockets). The reason phrase follows Azure's shape,
``{message}. TrackingId:{id}, SystemTracker:{tracker}, Timestamp:{time}``, because SDK tests and
user code look for those words.
"""

from __future__ import annotations

import uuid

__all__ = [
    "RelayError", "BadRequest", "Unauthorized", "Forbidden", "QuotaExceeded", "EndpointNotFound",
    "Gone", "RequestTimeout", "RequestTooLarge", "HeadersTooLarge", "InternalError", "BadGateway", "ServerBusy", "GatewayTimeout",
    "ProtocolViolation", "new_tracking_id", "format_reason", "safe_reason", "close_reason",
]


def new_tracking_id() -> str:
    """A fresh tracking id (a UUID, as Azure uses)."""
    return str(uuid.uuid4())


def safe_reason(text: str, limit: int = 512) -> str:
    """Make *text* safe for an HTTP reason phrase: one line of latin-1, bounded length."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in text).strip()
    return cleaned[:limit]


def format_reason(message: str, tracking_id: str, tracker: str = "", timestamp: str = "") -> str:
    """Azure-style reason phrase carrying the tracking id (pure: time is passed in)."""
    parts = [f"TrackingId:{tracking_id}"]
    if tracker:
        parts.append(f"SystemTracker:{tracker}")
    if timestamp:
        parts.append(f"Timestamp:{timestamp}")
    tail = ". " + ", ".join(parts)
    # Cut the message, never the tracking id: support needs it whole.
    return safe_reason(message, max(64, 512 - len(tail))).rstrip(".") + safe_reason(tail, 512)


def close_reason(message: str, tracking_id: str | None = None) -> str:
    """A WebSocket close reason: at most 123 bytes, with the tracking id always kept whole."""
    suffix = f". TrackingId:{tracking_id or new_tracking_id()}"
    room = 123 - len(suffix)
    text = safe_reason(message).rstrip(".")
    if len(text) > room:
        text = text[: room - 3].rstrip() + "..."
    return text + suffix


class RelayError(Exception):
    """Base of every error the relay reports to a client."""

    status: int = 500
    close_code: int = 1011
    code: str = "InternalError"

    def __init__(self, message: str, *, tracking_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tracking_id = tracking_id or new_tracking_id()

    def reason(self, tracker: str = "", timestamp: str = "") -> str:
        """The reason phrase (or close reason) with the tracking id."""
        return format_reason(self.message, self.tracking_id, tracker, timestamp)

    def close_reason(self) -> str:
        """The reason for a Close frame: short enough to fit, tracking id included."""
        return close_reason(self.message, self.tracking_id)


class BadRequest(RelayError):
    status, close_code, code = 400, 1008, "BadRequest"


class Unauthorized(RelayError):
    status, close_code, code = 401, 1008, "Unauthorized"


class Forbidden(RelayError):
    status, close_code, code = 403, 1008, "Forbidden"


class QuotaExceeded(Forbidden):
    code = "QuotaExceeded"


class EndpointNotFound(RelayError):
    status, close_code, code = 404, 1008, "EndpointNotFound"


class Gone(RelayError):
    status, close_code, code = 410, 1000, "Gone"


class RequestTimeout(RelayError):
    status, close_code, code = 408, 1008, "RequestTimeout"


class RequestTooLarge(RelayError):
    status, close_code, code = 413, 1009, "RequestEntityTooLarge"


class HeadersTooLarge(RelayError):
    status, close_code, code = 431, 1009, "RequestHeaderFieldsTooLarge"


class InternalError(RelayError):
    status, close_code, code = 500, 1011, "InternalError"


class BadGateway(RelayError):
    status, close_code, code = 502, 1011, "BadGateway"


class ServerBusy(RelayError):
    """Every candidate listener is too far behind to take more (its socket is full)."""

    status, close_code, code = 503, 1013, "ServerBusy"


class GatewayTimeout(RelayError):
    status, close_code, code = 504, 1011, "GatewayTimeout"


class ProtocolViolation(RelayError):
    """A peer broke the control-channel rules (binary or malformed JSON, oversized message)."""

    status, close_code, code = 400, 1008, "ProtocolViolation"
