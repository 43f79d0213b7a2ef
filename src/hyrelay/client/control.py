"""A listener's control channel on picows: whole messages in, commands out.

The control channel carries every inline HTTP request and its answer, so it sits on the fast
WebSocket engine (picows masks and frames in C; ``websockets`` does it in Python, with a
``getrandom`` system call per frame). Rendezvous and data connections stay on ``websockets``.
Failures surface as ``websockets``' ``ConnectionClosed``, like every other socket of the SDK.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from picows import (WSAutoPingStrategy, WSError, WSFrame, WSHandshakeError, WSListener, WSMsgType, WSTransport,
                    ws_connect)
from picows.picows import WSProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from .._picows import CoalescingTransport, send_close, send_frame
from ..protocol.errors import BadGateway, RelayError
from ._errors import error_from_status
from .http import TooLarge

__all__ = ["ControlSocket", "open_control"]

_log = logging.getLogger("hyrelay.client.control")

#: Stop reading from the relay while this many messages wait to be taken.
_BACKLOG = 256


class ControlSocket(WSListener):
    """Reassembles messages (text up to *text_limit*, binary up to *binary_limit* bytes) into a queue."""

    def __init__(self, text_limit: int, binary_limit: int) -> None:
        self.text_limit = text_limit
        self.binary_limit = binary_limit
        self.transport: WSTransport | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._messages: collections.deque[str | bytes | TooLarge] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._parts: list[bytes] | None = None
        self._text = False
        self._size = 0
        self._gone = False
        self._close_sent = False
        self._paused = False
        self._writable: asyncio.Future[None] | None = None
        self._disconnected: asyncio.Future[None] | None = None

    # -- picows callbacks ------------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._disconnected = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY:
            self._text = msg_type is WSMsgType.TEXT
            self._size = frame.payload_size
            if frame.fin:
                self._parts = None
                self._finish(frame.get_payload_as_bytes())
            else:
                self._parts = [frame.get_payload_as_bytes()] if self._size <= self._limit() else []
        elif msg_type is WSMsgType.CONTINUATION and self._parts is not None:
            self._size += frame.payload_size
            if self._parts and self._size <= self._limit():
                self._parts.append(frame.get_payload_as_bytes())
            else:
                self._parts = []  # over the limit: counted, not kept
            if frame.fin:
                parts, self._parts = self._parts, None
                self._finish(b"".join(parts) if parts else None)
        elif msg_type is WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            self.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            if not self._close_sent:
                self._close_sent = True
                send_close(transport, self.close_code if self.close_code != 1005 else 1000, "")
            transport.disconnect()

    def _limit(self) -> int:
        return self.text_limit if self._text else self.binary_limit

    def _finish(self, payload: bytes | None) -> None:
        if payload is None or self._size > self._limit():
            message: str | bytes | TooLarge = TooLarge(self._text, self._size)
        elif self._text:
            try:
                message = payload.decode()
            except UnicodeDecodeError:
                self._fail(1007, "Invalid UTF-8 in a text message")
                return
        else:
            message = payload
        self._messages.append(message)
        if len(self._messages) >= _BACKLOG and not self._paused and self.transport is not None:
            self._paused = True  # whoever reads is behind: let TCP push back on the relay
            self.transport.underlying_transport.pause_reading()
        self._wake()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._gone = True
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, code: int, reason: str) -> None:
        if self.transport is not None and not self._close_sent:
            self._close_sent = True
            send_close(self.transport, code, reason)
            self.transport.disconnect()

    # -- the listener's side ---------------------------------------------------------------------
    def closed_error(self) -> ConnectionClosed:
        """What reading or writing a gone channel raises."""
        rcvd = Close(self.close_code, self.close_reason or "") if self.close_code is not None else None
        kind = ConnectionClosedOK if rcvd is not None and rcvd.code in (1000, 1001) else ConnectionClosedError
        return kind(rcvd, None)

    async def recv(self, binary_limit: int | None = None) -> str | bytes | TooLarge:
        """The next whole message, or TooLarge for one over the socket's limits or *binary_limit* bytes.

        Raises:
            ConnectionClosed: the channel is gone and every message before that was read.
        """
        messages = self._messages
        while not messages:
            if self._gone:
                raise self.closed_error()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = messages.popleft()
        if self._paused and len(messages) < _BACKLOG // 2 and not self._gone and self.transport is not None:
            self._paused = False
            self.transport.underlying_transport.resume_reading()
        if isinstance(message, bytes) and binary_limit is not None and len(message) > binary_limit:
            return TooLarge(False, len(message))
        return message

    async def send(self, *messages: str | bytes) -> None:
        """Send whole *messages* (``str`` as text, ``bytes`` as binary) back to back; nothing interleaves.

        Raises:
            ConnectionClosed: the channel is gone.
        """
        if self._writable is not None and not self._writable.done():
            await asyncio.shield(self._writable)  # the relay is not reading: wait, do not buffer
        transport = self.transport
        if self._gone or self._close_sent or transport is None:
            raise self.closed_error()
        for message in messages:  # no await in here: the frames leave together
            if isinstance(message, str):
                send_frame(transport, WSMsgType.TEXT, message.encode())
            else:
                send_frame(transport, WSMsgType.BINARY, message)

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 5.0) -> None:
        """Send a Close frame and wait (at most *timeout*) for the relay's, then disconnect."""
        transport = self.transport
        if transport is None:
            return
        if not self._close_sent and not self._gone:
            self._close_sent = True
            send_close(transport, code, reason)
        if self._disconnected is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._disconnected), timeout)
            except asyncio.TimeoutError:
                pass
        transport.disconnect()

    async def wait_closed(self) -> None:
        if self._disconnected is not None:
            await asyncio.shield(self._disconnected)


async def open_control(url: str, headers: dict[str, str], *, text_limit: int, binary_limit: int,
                       ping_interval: float | None, timeout: float, max_frame_size: int) -> ControlSocket:
    """Connect a control channel to *url* with *headers*.

    Raises:
        RelayError: the relay refused the upgrade (its status and reason phrase kept).
        OSError, TimeoutError: the relay cannot be reached.
    """
    def socket() -> ControlSocket:
        return ControlSocket(text_limit, binary_limit)

    options: dict[str, Any] = dict(
        websocket_handshake_timeout=timeout, enable_auto_ping=ping_interval is not None,
        auto_ping_idle_timeout=ping_interval or 20.0, auto_ping_reply_timeout=ping_interval or 20.0,
        auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE, max_frame_size=max_frame_size)
    # The same proxy rules (HTTPS_PROXY, NO_PROXY, ...) as the SDK's websockets sockets follow.
    proxy = get_proxy(parse_uri(url))
    try:
        if proxy is not None:  # picows' own connector, without write coalescing
            _, listener = await ws_connect(socket, url, extra_headers=headers, proxy=proxy, logger_name=_log,
                                           **options)
            return listener  # type: ignore[return-value]
        return await _connect_direct(url, headers, socket, timeout, options)
    except WSHandshakeError as exc:
        raise _refusal(exc) from None
    except WSError as exc:
        raise BadGateway(f"The relay answered the WebSocket upgrade incorrectly: {exc}") from None


async def _connect_direct(url: str, headers: dict[str, str], socket: Callable[[], ControlSocket],
                          timeout: float, options: dict[str, Any]) -> ControlSocket:
    """What picows' ws_connect() does for a direct connection, except that the protocol writes
    through a CoalescingTransport: a response's head and body frames, and the answers to every
    request handled in the same loop iteration, leave in one system call."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    loop = asyncio.get_running_loop()
    transport, _ = await asyncio.wait_for(loop.create_connection(
        asyncio.Protocol, parts.hostname, parts.port or (443 if secure else 80),
        ssl=ssl.create_default_context() if secure else None), timeout)
    protocol = WSProtocol(
        parts.netloc, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), True, socket, _log,
        True, timeout, options["enable_auto_ping"], options["auto_ping_idle_timeout"],
        options["auto_ping_reply_timeout"], options["auto_ping_strategy"], True, options["max_frame_size"],
        headers, 16 * 1024)
    transport.set_protocol(protocol)
    protocol.connection_made(CoalescingTransport(transport, loop))  # type: ignore[arg-type]
    try:
        await protocol.wait_until_handshake_complete()
    except BaseException:
        transport.abort()
        raise
    return protocol.listener  # type: ignore[return-value]


def _refusal(exc: WSHandshakeError) -> RelayError:
    """The relay's refusal, from the raw status line (picows keeps the status, not the reason)."""
    status, reason = 502, str(exc)
    if exc.raw_header:
        line = exc.raw_header.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[1].isdigit():
            status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    elif exc.response is not None:
        status = int(exc.response.status)
    tracking: Any = exc.response.headers.get("TrackingId") if exc.response is not None else None
    if status == 101 or status < 300:
        return BadGateway(f"The relay answered the WebSocket upgrade incorrectly: {exc}")
    return error_from_status(status, reason, tracking)
