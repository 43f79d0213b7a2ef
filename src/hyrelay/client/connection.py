"""One relayed WebSocket connection, as a sender or a listener sees it (spec §3.4)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Literal

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as _WsClosed

__all__ = ["HybridConnection", "ConnectionClosed", "Headers", "MAX_FRAGMENT_SIZE"]

_log = logging.getLogger("hyrelay.client")

#: The largest single frame accepted; matches the relay's own frame limit.
MAX_FRAGMENT_SIZE = 16 << 20


class Headers(Mapping[str, str]):
    """Read-only headers with case-insensitive names; original casing kept for iteration."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        pairs = items.items() if isinstance(items, Mapping) else (items or ())
        self._items: dict[str, str] = {}
        self._index: dict[str, str] = {}
        for name, value in pairs:
            key = self._index.setdefault(name.lower(), name)
            # Repeated names are joined the way HTTP allows, so no value is lost.
            self._items[key] = f"{self._items[key]}, {value}" if key in self._items else value

    def __getitem__(self, name: str) -> str:
        return self._items[self._index[name.lower()]]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    # get() and items() spelled out: Mapping's own go through __getitem__ and KeyError, or build
    # views in Python, and proxies call them for every header of every request.
    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        key = self._index.get(name.lower()) if isinstance(name, str) else None
        return default if key is None else self._items[key]

    def items(self):  # type: ignore[override]
        return self._items.items()

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class ConnectionClosed(Exception):
    """The connection is closed; ``code`` and ``reason`` are what the peer (or the relay) sent."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason

    @property
    def ok(self) -> bool:
        """A normal closure (1000, or 1001 going away)."""
        return self.code in (1000, 1001)


class HybridConnection:
    """A WebSocket relayed between a sender and a listener.

    Messages are ``str`` (text) or ``bytes`` (binary). ``recv_stream`` and ``send_stream`` handle
    one message fragment by fragment, which is how large payloads travel without being buffered.
    """

    def __init__(self, ws: ClientConnection, *, role: Literal["sender", "listener"], id: str,
                 path_suffix: str = "", query: str = "", headers: Headers | None = None,
                 remote_endpoint: tuple[str, int] | None = None) -> None:
        self._ws = ws
        self.role = role
        self.id = id
        self.path_suffix = path_suffix
        self.query = query
        self.headers = headers if headers is not None else Headers()
        self.remote_endpoint = remote_endpoint

    # -- properties -----------------------------------------------------------------------------
    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the listener chose, or None."""
        return self._ws.subprotocol

    @property
    def close_code(self) -> int | None:
        """The close code received from the other side; None while open, 1006 if none came."""
        return self._ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self._ws.close_reason

    @property
    def is_open(self) -> bool:
        return self._ws.close_code is None

    # -- data -----------------------------------------------------------------------------------
    def _closed(self, exc: _WsClosed) -> ConnectionClosed:
        rcvd = exc.rcvd
        code = rcvd.code if rcvd is not None else 1006
        return ConnectionClosed(code, rcvd.reason if rcvd is not None else "")

    async def send(self, data: str | bytes) -> None:
        """Send one message: ``str`` as text, ``bytes`` as binary.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            await self._ws.send(data)
        except _WsClosed as exc:
            raise self._closed(exc) from None

    async def send_stream(self, chunks: AsyncIterable[bytes] | Iterable[bytes]) -> None:
        """Send one binary message, one frame per chunk (an empty iterable sends an empty message).

        The message ends with an empty final frame (websockets learns that a stream has ended
        only after its last chunk), so the receiver sees one extra, empty fragment.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            await self._ws.send(_at_least_one(chunks))
        except _WsClosed as exc:
            raise self._closed(exc) from None

    async def recv(self) -> str | bytes:
        """The next whole message.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            return await self._ws.recv()
        except _WsClosed as exc:
            raise self._closed(exc) from None

    async def recv_stream(self) -> AsyncIterator[str | bytes]:
        """The fragments of the next message as they arrive; consume it to the end.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            async for fragment in self._ws.recv_streaming():
                yield fragment
        except _WsClosed as exc:
            raise self._closed(exc) from None

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        """Messages until a normal close; any other close raises ConnectionClosed."""
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed as exc:
                if exc.ok:
                    return
                raise
            yield message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with *code* and *reason* and wait for the other side's Close."""
        await self._ws.close(code, reason)
        _log.debug("event=connection_closed role=%s connection=%s code=%s", self.role, self.id, code)

    async def wait_closed(self) -> None:
        await self._ws.wait_closed()

    async def __aenter__(self) -> "HybridConnection":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close(1000 if exc is None else 1011, "" if exc is None else "Unhandled error")

    def __repr__(self) -> str:
        return f"<HybridConnection role={self.role} id={self.id} open={self.is_open}>"


async def _at_least_one(chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    # websockets sends nothing for an empty iterable; a message with no chunks is still a message.
    sent = False
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            sent = True
            yield chunk
    else:
        for chunk in chunks:
            sent = True
            yield chunk
    if not sent:
        yield b""
