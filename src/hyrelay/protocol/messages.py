"""Control-channel messages (spec §2.3, §2.7): JSON text, one top-level key per message."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolViolation

__all__ = ["accept_message", "RenewToken", "ListenerMessage", "parse_listener_message", "MAX_CONTROL_MESSAGE",
           "Accept", "RelayCommand", "parse_relay_message", "renew_token_message"]

#: The .NET listener reads control messages into a 64 KiB buffer (spec §2.2); we hold listeners to the same.
MAX_CONTROL_MESSAGE = 64 * 1024


def accept_message(address: str, connection_id: str, connect_headers: dict[str, str],
                   remote_address: str, remote_port: int) -> str:
    """The ``accept`` message that tells a listener a sender is waiting at *address*."""
    return json.dumps(
        {"accept": {"address": address, "id": connection_id, "connectHeaders": connect_headers,
                    "remoteEndpoint": {"address": remote_address, "port": remote_port}}},
        separators=(",", ":"), ensure_ascii=False,
    )


@dataclass(frozen=True, slots=True)
class RenewToken:
    """``{"renewToken":{"token":"..."}}`` from a listener."""

    token: str


@dataclass(frozen=True, slots=True)
class ListenerMessage:
    """Any other JSON command from a listener (``response`` for HTTP, unknown ones to ignore)."""

    name: str
    body: Any


def parse_listener_message(text: str) -> RenewToken | ListenerMessage:
    """Decode a text message a listener sent on its control channel.

    Raises:
        ProtocolViolation: not a JSON object, or a malformed ``renewToken``.
    """
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolViolation("Control channel message is not valid JSON") from None
    if not isinstance(doc, dict) or not doc:
        raise ProtocolViolation("Control channel message must be a JSON object with one command")
    name, body = next(iter(doc.items()))
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


@dataclass(frozen=True, slots=True)
class RelayCommand:
    """Any other JSON command from the relay (``request`` for HTTP, unknown ones to ignore)."""

    name: str
    body: Any


def parse_relay_message(text: str) -> Accept | RelayCommand:
    """Decode a text message the relay sent on a control channel.

    Raises:
        ProtocolViolation: not a JSON object, or a malformed ``accept``.
    """
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolViolation("Control channel message is not valid JSON") from None
    if not isinstance(doc, dict) or not doc:
        raise ProtocolViolation("Control channel message must be a JSON object with one command")
    name, body = next(iter(doc.items()))
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
    return json.dumps({"renewToken": {"token": token}}, separators=(",", ":"), ensure_ascii=False)
