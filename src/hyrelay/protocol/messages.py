"""Control-channel messages (spec §2.3, §2.7): JSON text, one top-level key per message."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolViolation

__all__ = ["accept_message", "RenewToken", "ListenerMessage", "parse_listener_message", "MAX_CONTROL_MESSAGE"]

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
    except ValueError:
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
