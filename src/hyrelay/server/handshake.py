"""Reading the head of an incoming HTTP request, and answering an upgrade with an error."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httptools

from ..protocol.errors import RelayError

__all__ = ["Head", "parse_head", "error_response", "json_response", "utc_timestamp"]


@dataclass(slots=True)
class Head:
    """Method, target and headers (original casing, in order) of one request head."""

    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of *name*, case-insensitively."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def is_websocket(self) -> bool:
        upgrade = self.header("upgrade") or ""
        return "websocket" in upgrade.lower()


class _Collector:
    def __init__(self, head: Head) -> None:
        self.head = head

    def on_url(self, url: bytes) -> None:
        self.head.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.headers.append((name.decode("latin-1"), value.decode("latin-1")))


def parse_head(data: bytes) -> Head:
    """Parse a complete request head (up to and including the blank line).

    Raises:
        ValueError: the bytes are not a valid HTTP/1.x request head.
    """
    head = Head()
    parser = httptools.HttpRequestParser(_Collector(head))
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        raise ValueError(str(exc)) from None
    head.method = parser.get_method().decode()
    return head


def utc_timestamp() -> str:
    """The time as Azure Relay writes it in error reasons."""
    return time.strftime("%m/%d/%Y %I:%M:%S %p", time.gmtime())


def json_response(status: int, reason: str, doc: object, headers: dict[str, str], *, close: bool) -> bytes:
    """A complete HTTP/1.1 response with a JSON body, written by the relay itself (no framework)."""
    body = json.dumps(doc).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    ).encode("latin-1") + body


def error_response(err: RelayError, reason: str, status: int | None = None, *, close: bool = True) -> bytes:
    """A complete HTTP response for a refused request, JSON body included; ``Connection: close`` by default.

    *status* overrides the error's own, for a listener's reject passed through to its sender.
    """
    doc = {"error": {"code": err.code, "message": reason, "trackingId": err.tracking_id}}
    return json_response(status or err.status, reason, doc, {"TrackingId": err.tracking_id}, close=close)
