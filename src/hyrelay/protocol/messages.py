"""Control-channel messages (spec §2.3, §2.7): JSON text, one top-level key per message."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from .errors import ProtocolViolation

__all__ = ["accept_message", "RenewToken", "ListenerMessage", "parse_listener_message", "MAX_CONTROL_MESSAGE",
           "Accept", "RelayCommand", "parse_relay_message", "renew_token_message", "Endpoint", "HttpRequest",
           "request_message", "decode_request", "parse_request", "ResponseHead", "response_message",
           "decode_response", "parse_response", "MalformedResponse"]

#: Compact JSON, UTF-8 left as is; one encoder for every message (json.dumps with options builds one per call).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: The .NET listener reads control messages into a 64 KiB buffer (spec §2.2); we hold listeners to the same.
MAX_CONTROL_MESSAGE = 64 * 1024


def accept_message(address: str, connection_id: str, connect_headers: dict[str, str],
                   remote_address: str, remote_port: int) -> str:
    """The ``accept`` message that tells a listener a sender is waiting at *address*."""
    return _encode(
        {"accept": {"address": address, "id": connection_id, "connectHeaders": connect_headers,
                    "remoteEndpoint": {"address": remote_address, "port": remote_port}}})


@dataclass(frozen=True, slots=True)
class RenewToken:
    """``{"renewToken":{"token":"..."}}`` from a listener."""

    token: str


@dataclass(slots=True)  # not frozen: built per request, and a frozen __init__ costs ~5x
class ListenerMessage:
    """Any other JSON command from a listener (``response`` for HTTP, unknown ones to ignore)."""

    name: str
    body: Any


def _command(text: str) -> tuple[str, Any]:
    """The (name, body) of a control-channel command: a JSON object with one top-level key."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # deep nesting is as malformed as a syntax error
        raise ProtocolViolation("Control channel message is not valid JSON") from None
    if not isinstance(doc, dict) or not doc:
        raise ProtocolViolation("Control channel message must be a JSON object with one command")
    return next(iter(doc.items()))


def parse_listener_message(text: str) -> RenewToken | ListenerMessage:
    """Decode a text message a listener sent on its control channel.

    Raises:
        ProtocolViolation: not a JSON object, or a malformed ``renewToken``.
    """
    name, body = _command(text)
    if name == "renewToken":
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolViolation("renewToken must carry a token string")
        return RenewToken(token)
    return ListenerMessage(name, body)


# -- the listener's side of the same channel ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """``{"accept":{...}}`` from the relay: a sender waits at *address* (spec §2.3)."""

    address: str
    id: str
    connect_headers: dict[str, str]
    remote_address: str | None = None
    remote_port: int | None = None


@dataclass(slots=True)  # not frozen: built per request, and a frozen __init__ costs ~5x
class RelayCommand:
    """Any other JSON command from the relay (``request`` for HTTP, unknown ones to ignore)."""

    name: str
    body: Any


def parse_relay_message(text: str) -> Accept | RelayCommand:
    """Decode a text message the relay sent on a control channel.

    Raises:
        ProtocolViolation: not a JSON object, or a malformed ``accept``.
    """
    name, body = _command(text)
    if name != "accept":
        return RelayCommand(name, body)
    if not isinstance(body, dict) or not isinstance(body.get("address"), str) or not body["address"]:
        raise ProtocolViolation("accept must carry an address string")
    headers = body.get("connectHeaders") or {}
    if not isinstance(headers, dict):
        raise ProtocolViolation("accept.connectHeaders must be an object")
    remote = body.get("remoteEndpoint")
    address = port = None
    if isinstance(remote, dict):
        address = remote.get("address") if isinstance(remote.get("address"), str) else None
        port = remote.get("port") if isinstance(remote.get("port"), int) else None
    return Accept(body["address"], str(body.get("id") or ""),
                  {str(k): str(v) for k, v in headers.items()}, address, port)


def renew_token_message(token: str) -> str:
    """The ``renewToken`` message; the token travels as the plain header value (spec §2.7)."""
    return _encode({"renewToken": {"token": token}})


# -- HTTP over the control channel and rendezvous (spec §4.4–§4.6) --------------------------------

#: A request whose head and body fit in this many bytes may travel on the control channel.
MAX_INLINE_REQUEST = 64 * 1024
#: Header metadata allowed on the control channel (spec §4.3).
MAX_HEADER_METADATA = 32 * 1024


class Endpoint(msgspec.Struct):
    """``remoteEndpoint``: the HTTP client's address and port, as the relay saw them."""

    address: str | None = None
    port: int | None = None


# The per-request messages are msgspec structs: one C call encodes or decodes and type-checks a
# whole message, where json plus checks in Python cost several times more (they run per request).
class HttpRequest(msgspec.Struct, omit_defaults=True,
                  rename={"target": "requestTarget", "remote": "remoteEndpoint", "headers": "requestHeaders"}):
    """``{"request":{...}}``: a full request (``method`` and ``body`` present) or a rendezvous stub."""

    address: str
    id: str
    target: str | None = None
    method: str | None = None
    remote: Endpoint | None = None
    headers: dict[str, str] | None = None
    body: bool | None = None

    @property
    def is_stub(self) -> bool:
        """True if the listener must fetch the request over a rendezvous (spec §4.5)."""
        return self.method is None

    @property
    def remote_address(self) -> str | None:
        return None if self.remote is None else self.remote.address

    @property
    def remote_port(self) -> int | None:
        return None if self.remote is None else self.remote.port


class _RequestCommand(msgspec.Struct):
    request: HttpRequest


_encode_struct = msgspec.json.Encoder().encode
_decode_request = msgspec.json.Decoder(_RequestCommand).decode


def request_message(request: HttpRequest) -> bytes:
    """Encode a ``request`` as UTF-8 text; a stub carries only ``address`` and ``id``, a full one
    always ``requestHeaders`` and ``body``."""
    if not request.is_stub and (request.headers is None or request.body is None):
        request = msgspec.structs.replace(request, headers=request.headers or {}, body=bool(request.body))
    return _encode_struct(_RequestCommand(request))


def decode_request(text: str) -> HttpRequest | None:
    """The request in *text* if it is a plain, well-typed ``request`` command (listener side);
    None means: parse it with :func:`parse_relay_message`, which tolerates more."""
    if not text.startswith('{"request":'):
        return None
    try:
        return _decode_request(text).request
    except (msgspec.DecodeError, UnicodeError, RecursionError):  # deep nesting: json says it is malformed
        return None


def parse_request(body: Any) -> HttpRequest:
    """Decode the body of a ``request`` command (listener side).

    Raises:
        ProtocolViolation: no address or id, or wrongly typed fields.
    """
    if not isinstance(body, dict) or not isinstance(body.get("address"), str) or "id" not in body:
        raise ProtocolViolation("request must carry an address and an id")
    method = body.get("method")
    headers = body.get("requestHeaders") or {}
    if (method is not None and not isinstance(method, str)) or not isinstance(headers, dict):
        raise ProtocolViolation("request.method must be a string and requestHeaders an object")
    remote = body.get("remoteEndpoint")
    if not isinstance(remote, dict):
        remote = {}
    for value in headers.values():  # JSON keys are strings already; values are, from a sane relay
        if type(value) is not str:
            headers = {k: str(v) for k, v in headers.items()}
            break
    request_id = body["id"]
    address, port = remote.get("address"), remote.get("port")
    return HttpRequest(
        body["address"], request_id if type(request_id) is str else str(request_id), body.get("requestTarget"),
        method, Endpoint(address if isinstance(address, str) else None, port if type(port) is int else None)
        if remote else None, headers, bool(body.get("body")) if "body" in body else None,
    )


class ResponseHead(msgspec.Struct, omit_defaults=True,
                   rename={"request_id": "requestId", "status": "statusCode", "description": "statusDescription",
                           "headers": "responseHeaders"}):
    """``{"response":{...}}``: status line and headers of a relayed HTTP response."""

    request_id: str
    status: int
    description: str | None = None
    headers: dict[str, str] | None = None
    body: bool | None = None  # None (absent) reads as False; encoded only when given


class _ResponseCommand(msgspec.Struct):
    response: ResponseHead


_decode_response = msgspec.json.Decoder(_ResponseCommand).decode


def response_message(head: ResponseHead) -> str:
    """Encode a ``response`` (listener side); ``responseHeaders`` and ``body`` are always there."""
    if head.headers is None or head.body is None:
        head = msgspec.structs.replace(head, headers=head.headers or {}, body=bool(head.body))
    return _encode_struct(_ResponseCommand(head)).decode()


#: An HTTP header name (RFC 7230 token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Characters a header value cannot carry on the wire: line breaks, NUL, and lone surrogates (valid
#: JSON escapes that no byte encoding can write).
_BAD_VALUE = re.compile("[\r\n\0\ud800-\udfff]")


class MalformedResponse(ProtocolViolation):
    """A ``response`` for a known request that cannot be used (the client gets 502)."""

    def __init__(self, message: str, request_id: str, body: bool) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.body = body


def decode_response(data: bytes) -> ResponseHead | None:
    """The head in *data* if it is a plain, well-typed ``response`` command (relay side).

    None means: parse it with :func:`parse_listener_message` and :func:`parse_response`, which
    tolerate more (a status as a string, non-string header values).

    Raises:
        MalformedResponse: well-typed, but the status or a header cannot be relayed.
    """
    # msgspec checks UTF-8 only in the strings it decodes, not in fields it skips: a text frame
    # that is not ASCII is left to the tolerant path, which decodes (and so checks) all of it.
    if not data.startswith(b'{"response":') or not data.isascii():
        return None
    try:
        head = _decode_response(data).response
    except (msgspec.DecodeError, RecursionError):  # deep nesting: json says it is malformed
        return None
    if not head.request_id:
        return None  # the generic path names the problem
    return _checked(head)


def parse_response(body: Any) -> ResponseHead:
    """Decode the body of a ``response`` command (relay side), tolerant as spec §8.5 asks.

    Raises:
        ProtocolViolation: no usable ``requestId`` (the channel is broken).
        MalformedResponse: the request is known but the status or headers are unusable.
    """
    if not isinstance(body, dict) or not isinstance(body.get("requestId"), str) or not body["requestId"]:
        raise ProtocolViolation("response must carry a requestId string")
    request_id, has_body = body["requestId"], body.get("body") is True
    status = body.get("statusCode")
    try:
        status = int(status)  # PROTO's example sends it as a string
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 reads as infinity
        raise MalformedResponse(f"response.statusCode {status!r} is not a number", request_id, has_body) from None
    headers = body.get("responseHeaders") or {}
    if not isinstance(headers, dict):
        raise MalformedResponse("response.responseHeaders must be an object", request_id, has_body)
    clean = {name if isinstance(name, str) else str(name): value if isinstance(value, str) else str(value)
             for name, value in headers.items()}
    description = body.get("statusDescription")
    return _checked(ResponseHead(request_id, status, description if isinstance(description, str) else None,
                                 clean, has_body))


def _checked(head: ResponseHead) -> ResponseHead:
    """*head* with ``body`` a bool, if its status and headers can be relayed.

    Raises:
        MalformedResponse: they cannot.
    """
    has_body = head.body is True
    if not 200 <= head.status <= 999:
        raise MalformedResponse(f"response.statusCode {head.status} cannot be relayed", head.request_id, has_body)
    clean = head.headers
    if clean and ("" in clean or not _TOKEN.fullmatch("".join(clean)) or _BAD_VALUE.search("".join(clean.values()))):
        # Found at once for all headers; name the culprit only on this slow path.
        for name, value in clean.items():
            if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                raise MalformedResponse(f"response header {name[:40]!r} is not a valid HTTP header",
                                        head.request_id, has_body)
    head.body = has_body
    return head
