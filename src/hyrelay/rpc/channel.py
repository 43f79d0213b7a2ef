"""Message channels a JSON-RPC peer talks over: a relayed HybridConnection or a plain WebSocket.

Both carry one JSON-RPC message (or batch) per WebSocket message, sent as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed as _WsClosed

from ..client.connection import ConnectionClosed, HybridConnection

__all__ = ["Channel", "ChannelClosed", "HybridChannel", "WebSocketChannel"]


class ChannelClosed(Exception):
    """The channel is closed; ``code`` and ``reason`` come from the close frame (1006 if none came)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class Channel(Protocol):
    """What a peer needs from a connection."""

    #: Headers of the connection (the sender's, as the listener saw them), for ``Context.headers``.
    headers: Mapping[str, str]
    #: The underlying connection object, for ``Context.connection``.
    connection: Any
    #: The negotiated WebSocket subprotocol, if any.
    subprotocol: str | None

    async def send(self, data: bytes) -> None:
        """Send one text message, given as UTF-8. Raises ChannelClosed."""
        ...

    async def recv(self) -> str | bytes:
        """The next whole message. Raises ChannelClosed."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ...


class HybridChannel:
    """A relayed connection (sender or listener side)."""

    __slots__ = ("connection", "headers", "subprotocol")

    def __init__(self, connection: HybridConnection) -> None:
        self.connection = connection
        self.headers: Mapping[str, str] = connection.headers
        self.subprotocol = connection.subprotocol

    async def send(self, data: bytes) -> None:
        try:
            await self.connection.send(data.decode())
        except ConnectionClosed as exc:
            raise ChannelClosed(exc.code, exc.reason) from None

    async def recv(self) -> str | bytes:
        try:
            return await self.connection.recv()
        except ConnectionClosed as exc:
            raise ChannelClosed(exc.code, exc.reason) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.connection.close(code, reason)


class WebSocketChannel:
    """A plain websockets connection (client or server side), for running without the relay."""

    __slots__ = ("ws", "connection", "headers", "subprotocol")

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.connection = None
        self.subprotocol = ws.subprotocol
        request = getattr(ws, "request", None)
        self.headers: Mapping[str, str] = dict(request.headers.raw_items()) if request is not None else {}

    async def send(self, data: bytes) -> None:
        try:
            # Same as the relayed channel: str in, so both pay the same encoding cost.
            await self.ws.send(data.decode())
        except _WsClosed as exc:
            raise _closed(exc) from None

    async def recv(self) -> str | bytes:
        try:
            message: str | bytes = await self.ws.recv()
            return message
        except _WsClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)


def _closed(exc: _WsClosed) -> ChannelClosed:
    rcvd = exc.rcvd
    return ChannelClosed(rcvd.code if rcvd is not None else 1006, rcvd.reason if rcvd is not None else "")
