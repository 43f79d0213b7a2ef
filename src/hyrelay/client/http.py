"""Relayed HTTP on the listener side (spec §4): requests in, responses out.

The relay delivers a request either inline on the control channel (``request`` text, then one
binary body message) or as a stub whose full request, body streamed, must be fetched over a
rendezvous socket. The listener answers the way the .NET SDK does: response bodies are buffered
up to 64 KiB; a response that ends while it still fits, and before the flush interval has passed
since its first write, goes back inline on the control channel. Anything larger or slower opens a
rendezvous and streams as one fragmented binary message, written as the handler writes.

::

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        data = await request.read()
        response.headers["Content-Type"] = "text/plain"
        await response.end(b"got %d bytes" % len(data))

    listener = HybridConnectionListener(cs, entity="api", request_handler=handler)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from multidict import CIMultiDict
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as _WsClosed
from websockets.exceptions import InvalidHandshake

from ..protocol.errors import ProtocolViolation
from ..protocol.headers import HOP_BY_HOP, MULTICAST_HEADER
from ..protocol.messages import (MAX_CONTROL_MESSAGE, HttpRequest, RelayCommand, ResponseHead, decode_request,
                                 parse_relay_message, parse_request, response_message)
from .connection import Headers

__all__ = ["RelayedRequest", "RelayedResponse", "RequestBody", "RequestHandler", "ClientDisconnected",
           "MAX_CONTROL_BODY", "DEFAULT_FLUSH_INTERVAL"]

_log = logging.getLogger("hyrelay.client")

#: Response bodies up to this size may go back on the control channel (spec §4.3).
MAX_CONTROL_BODY = 64 * 1024
#: .NET's ``WriteBufferFlushTimeout``: a response still buffered this long after its first write
#: goes out over a rendezvous, so slow but small responses are not held back (spec §4.7).
DEFAULT_FLUSH_INTERVAL = 2.0
#: The relay sends at most 64 KiB inline; this bound only protects against a misbehaving relay.
MAX_INLINE_BODY = 1 << 20
#: After a response on a relay-initiated rendezvous, at most this much unread request body is
#: skipped to keep the socket for a next request; beyond it the socket is closed instead.
MAX_DRAIN = 1 << 20
#: How long a relay-initiated rendezvous may wait for its (next) request before we close it.
RENDEZVOUS_IDLE_TIMEOUT = 60.0

_DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {"via"}
_MULTICAST = MULTICAST_HEADER.lower()


class ClientDisconnected(ConnectionError):
    """The response cannot be delivered: the relay or the HTTP client went away.

    An ``OSError``, as ASGI 2.4 expects from ``send`` after a disconnect.
    """


# -- reading whole messages, bounded -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TooLarge:
    """What :func:`read_message` returns for a message over its limit (it was read, not held)."""

    text: bool
    size: int


async def read_message(ws: ClientConnection, text_limit: int, binary_limit: int) -> str | bytes | TooLarge:
    """The next whole message, or TooLarge if it was larger than the limit for its type.

    Raises:
        websockets.exceptions.ConnectionClosed: the socket closed.
    """
    parts: list[str | bytes] = []
    size = 0
    text: bool | None = None
    limit = 0
    async for fragment in ws.recv_streaming():
        if text is None:
            text = isinstance(fragment, str)
            limit = text_limit if text else binary_limit
        size += len(fragment)
        if size <= limit:
            parts.append(fragment)
    if size > limit:
        return TooLarge(bool(text), size)
    if text:
        return "".join(parts)  # type: ignore[arg-type]
    return b"".join(parts)  # type: ignore[arg-type]


class ControlLink(Protocol):
    """Where commands for the relay go: a control channel (:class:`.control.ControlSocket`).

    A response on the control channel is a text message and one binary message sent back to back;
    a concurrent response or ``renewToken`` must not land between the two (spec §2.2).
    """

    async def send(self, *messages: str | bytes) -> None:
        """Send *messages* with nothing interleaved.

        Raises:
            websockets.exceptions.ConnectionClosed: the control channel is gone.
        """


async def send_together(ws: ClientConnection, messages: tuple[str | bytes, ...]) -> None:
    """Send whole *messages* (``str`` as text, ``bytes`` as binary) back to back, in one socket write.

    This is what ``for m in messages: await ws.send(m)`` does, minus a write (and a drain) per
    message: the frames are built through websockets' sans-I/O protocol inside its own
    ``send_context()``, which checks the state, waits out backpressure (drain) and turns failures
    into ConnectionClosed exactly as ``send()`` does. Falls back to ``send()`` per message if the
    connection does not look like websockets' asyncio connection.

    Raises:
        websockets.exceptions.ConnectionClosed: the socket is gone.
    """
    send_context = getattr(ws, "send_context", None)
    transport = getattr(ws, "transport", None)
    if send_context is None or transport is None or not hasattr(ws, "send_in_progress"):
        for message in messages:
            await ws.send(message)
        return
    # As send() does: a fragmented message in progress finishes first.
    while ws.send_in_progress is not None:
        await asyncio.shield(ws.send_in_progress)
    async with send_context():
        protocol = ws.protocol
        for message in messages:
            if isinstance(message, str):
                protocol.send_text(message.encode())
            else:
                protocol.send_binary(message)
        data = protocol.data_to_send()
        if all(data):
            # send_context() then finds nothing left to write, and drains.
            transport.writelines(data)
        else:
            # An end-of-stream marker (a close in progress): leave it all to websockets' send_data().
            protocol.writes[:0] = data


class _DiscardLink:
    """Where answers to multicast copies go: nowhere. The relay would drop them unread."""

    async def send(self, *messages: str | bytes) -> None:
        return None


_DISCARD = _DiscardLink()


# -- the request -------------------------------------------------------------------------------


class RequestBody:
    """A request body as an async stream of ``bytes`` chunks; it can be consumed once.

    ``async for chunk in body`` yields chunks as they arrive; ``await body.read()`` collects them.
    """

    def __init__(self, source: AsyncIterator[bytes] | None = None, *, buffered: bool = False) -> None:
        self._source = source
        #: A complete body not yet handed out (see of()): no async generator until one is needed.
        self._data: bytes | None = None
        self._started = False
        self._done = source is None
        self._drained = 0
        #: True when the whole body is already here, as one chunk (an inline request's).
        self.buffered = buffered or source is None

    @classmethod
    def of(cls, data: bytes) -> "RequestBody":
        """A body that is already complete (an inline request's)."""
        body = cls(None, buffered=True)
        if data:
            body._data, body._done = data, False
        return body

    def _materialize(self) -> None:
        if self._data is not None:
            self._source, self._data = _once(self._data), None

    @property
    def consumed(self) -> bool:
        """True once the body has been read to its end."""
        return self._done

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise RuntimeError("the request body has already been read")
        self._started = True
        self._materialize()
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        if self._source is None:
            return
        # Not `async for`: an early break by the reader must leave the source usable for drain().
        while True:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._done = True
                return
            yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body.

        Raises:
            ValueError: the body is larger than *limit* bytes.
            ClientDisconnected: the relay cut the request off.
        """
        data = self._data
        if data is not None and not self._started:
            # A complete body: what iterating it would give, without the machinery.
            self._started = True
            if limit is not None and len(data) > limit:
                # As the loop below leaves it: the chunk taken, the end not yet seen.
                self._data, self._source = None, _nothing()
                raise ValueError(f"the request body is larger than {limit} bytes")
            self._data, self._done = None, True
            return data
        parts: list[bytes] = []
        size = 0
        async for chunk in self:
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError(f"the request body is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def drain(self, limit: int) -> bool:
        """Skip what the reader left unread; False if more than *limit* bytes were left."""
        self._materialize()
        if self._done or self._source is None:
            return True
        self._started = True
        async for chunk in self._source:
            self._drained += len(chunk)
            if self._drained > limit:
                return False
        self._done = True
        return True


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # makes this an async generator


async def _ws_body(ws: ClientConnection) -> AsyncIterator[bytes]:
    """The fragments of the next (binary) message on *ws*, as they arrive."""
    try:
        async for fragment in ws.recv_streaming():
            if isinstance(fragment, str):
                raise ProtocolViolation("A request body must be a binary message")
            if fragment:
                yield fragment
    except _WsClosed as exc:
        raise ClientDisconnected("The relay closed the rendezvous before the request body ended") from exc


def _unquote(text: str) -> str:
    """``unquote``, skipped when there is nothing to decode."""
    return unquote(text) if "%" in text else text


@functools.lru_cache(maxsize=64)
def _segments(entity: str) -> tuple[str, ...]:
    return tuple(s.lower() for s in entity.split("/") if s)


def split_target(target: str, entity: str) -> tuple[str, str, str]:
    """Split a request target into (raw prefix naming the hybrid connection, raw rest, raw query).

    ``/myhc/api/x?a=1`` for entity ``myhc`` gives ``("/myhc", "/api/x", "a=1")``. A name with a
    slash may come escaped: ``/orders%2FEU/x`` for ``orders/EU`` gives ``("/orders%2FEU", "/x", "")``.
    A target that does not start with the entity's name (PROTO's example is ambiguous, spec §4.4)
    keeps its whole path and an empty prefix.
    """
    raw, _, query = target.partition("?")
    names = _segments(entity)
    if len(names) == 1:  # the common case, without the loop: "/name" then "/" or the end
        end = len(names[0]) + 1
        if raw[:1] == "/" and raw[1:end].lower() == names[0] and raw[end:end + 1] in ("/", ""):
            return raw[:end], raw[end:] or "/", query
    pos = matched = 0
    while matched < len(names):
        while pos < len(raw) and raw[pos] == "/":
            pos += 1
        end = raw.find("/", pos)
        end = len(raw) if end < 0 else end
        segment = raw[pos:end]
        parts = [p.lower() for p in unquote(segment).split("/") if p] if "%" in segment else [segment.lower()]
        if not segment or list(names[matched:matched + len(parts)]) != parts:
            return "", raw or "/", query
        matched += len(parts)
        pos = end
    return raw[:pos], raw[pos:] or "/", query


@functools.lru_cache(maxsize=1024)
def _path_parts(raw_path: str, entity: str) -> tuple[str, str, str, str]:
    """split_target of a path without its query, raw and decoded; cached, as an app's paths recur
    (its queries do not, so they are left out of the key)."""
    raw_root, raw_rest, _ = split_target(raw_path, entity)
    return raw_root, raw_rest, _unquote(raw_root), _unquote(raw_rest)


class RelayedRequest:
    """An HTTP request relayed to this listener.

    Attributes:
        id: the relay's request id; it is also the tracking id of the answer.
        method: ``GET``, ``POST``, ...
        target: the request target as the relay gave it, ``/{hc}/rest?query`` (spec §4.4).
        root_path: the decoded part of the path that names the hybrid connection (``/myhc``);
            ``raw_root_path`` is the same, raw.
        raw_path: the rest of the path, raw (``/api/x``; ``/`` when there is none).
        path: ``raw_path`` decoded.
        query: the query string, raw, without ``?`` (``sb-hc-*`` parameters already removed).
        headers: case-insensitive; repeated headers arrive joined with ``", "``.
        remote_endpoint: the HTTP client's ``(address, port)``, when the relay says.
        scheme, server: how senders reach the relay (``http``/``https``, ``(host, port)``).
        body: the body stream (see :class:`RequestBody`).
    """

    http_version = "1.1"

    def __init__(self, message: HttpRequest, entity: str, body: RequestBody, *,
                 scheme: str = "http", server: tuple[str, int] | None = None) -> None:
        self.id = message.id
        self.method = (message.method or "GET").upper()
        self.target = message.target or "/"
        raw, _, self.query = self.target.partition("?")
        self.raw_root_path, self.raw_path, self.root_path, self.path = _path_parts(raw, entity)
        self._raw_headers = message.headers
        self._headers: Headers | None = None
        remote = message.remote
        self.remote_endpoint: tuple[str, int] | None = (
            (remote.address, int(remote.port or 0)) if remote is not None and remote.address else None)
        self.has_body = bool(message.body)
        self.body = body
        self.scheme = scheme
        self.server = server

    @property
    def headers(self) -> Headers:
        """The request headers (built on first use)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers(self._raw_headers or {})
            self._raw_headers = None
        return headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers, self._raw_headers = value, None

    @property
    def query_params(self) -> dict[str, str]:
        """``query`` decoded into a dict (the last of repeated names wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def url(self) -> str:
        """The URL the HTTP client used, as far as the relay tells (Host header, else the relay)."""
        host = self.headers.get("Host")
        if not host and self.server is not None:
            host = f"{self.server[0]}:{self.server[1]}"
        return f"{self.scheme}://{host or 'localhost'}{self.target}"

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (see :meth:`RequestBody.read`)."""
        return await self.body.read(limit)

    def __repr__(self) -> str:
        return f"<RelayedRequest id={self.id} {self.method} {self.target!r}>"


# -- the response ------------------------------------------------------------------------------


class _Channel:
    """Where one response goes: the control channel it came on, and/or a rendezvous socket."""

    __slots__ = ("control", "address", "ws", "_connect", "owned")

    def __init__(self, control: ControlLink | None, address: str,
                 connect: Callable[[str], Awaitable[ClientConnection]],
                 ws: ClientConnection | None = None) -> None:
        self.control = control
        self.address = address
        self.ws = ws
        self._connect = connect
        #: True once a rendezvous was opened here for the answer (close() closes it).
        self.owned = False

    async def rendezvous(self) -> ClientConnection:
        """The rendezvous socket; for an inline request it is opened on first use (spec §4.7)."""
        if self.ws is None:
            try:
                self.ws = await self._connect(self.address)
            except (InvalidHandshake, OSError, TimeoutError) as exc:
                raise ClientDisconnected(f"Cannot open the response rendezvous: {exc!r}") from exc
            self.owned = True
        return self.ws

    async def close(self) -> None:
        """Close a rendezvous we opened for the response (.NET does; the relay does too)."""
        if self.owned and self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close(1000, "")


_END = object()
_ABORT = object()


class _StreamAborted(Exception):
    """Raised into websockets' fragment loop so it fails the socket (1011) mid-message."""


class _BodyStream:
    """One fragmented binary message fed by ``write()`` calls through websockets' ``send(async iterator)``.

    The queue holds one chunk: a writer waits while the socket is backed up, so nothing buffers
    more than a chunk beyond what websockets already holds.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        self._task: asyncio.Task[None] | None = None

    async def _fragments(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _StreamAborted()
            yield item  # type: ignore[misc]

    def _error(self) -> ClientDisconnected:
        exc = self._task.exception() if self._task is not None and self._task.done() \
            and not self._task.cancelled() else None
        err = ClientDisconnected("The response rendezvous closed before the response ended")
        err.__cause__ = exc
        return err

    async def _put(self, item: object) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._ws.send(self._fragments()))
        if self._task.done():
            raise self._error()
        try:
            self._queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            pass
        putter = asyncio.ensure_future(self._queue.put(item))
        try:
            # Wait for room, unless the socket dies first: then nobody will ever make room.
            await asyncio.wait((putter, self._task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not putter.done():
                putter.cancel()
        if putter.cancelled() or not putter.done():
            raise self._error()

    async def write(self, data: bytes) -> None:
        await self._put(data)

    async def finish(self, last: bytes = b"") -> None:
        """End the message; with nothing streamed yet, *last* goes as one unfragmented message."""
        try:
            if self._task is None:
                await self._ws.send(last)
                return
            if last:
                await self._put(last)
            await self._put(_END)
            await self._task
        except _WsClosed as exc:
            raise ClientDisconnected("The response rendezvous closed before the response ended") from exc

    async def abort(self) -> None:
        """Cut the message short; the relay then cuts the HTTP client's response."""
        if self._task is None:
            with contextlib.suppress(Exception):
                await self._ws.close(1011, "The request handler failed")
            return
        if not self._task.done():
            try:
                self._queue.put_nowait(_ABORT)
            except asyncio.QueueFull:
                self._task.cancel()
        await asyncio.wait((self._task,))  # not `await task`: its failure is expected, ours is not
        if not self._task.cancelled():
            self._task.exception()
        with contextlib.suppress(Exception):
            await self._ws.close(1011, "The request handler failed")

    def discard(self) -> None:
        """Stop feeding the socket (the response will not be completed)."""
        if self._task is None:
            return
        if not self._task.done():
            self._task.cancel()
        elif not self._task.cancelled():
            self._task.exception()  # retrieved: the failure was already reported to the writer


#: Standard reason phrases; looked up for every response, and HTTPStatus(n) is an enum call.
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def _phrase(status: int) -> str | None:
    return _PHRASES.get(status)


class RelayedResponse:
    """The answer to a :class:`RelayedRequest`.

    Set ``status``, ``reason`` and ``headers``, then ``await write(data)`` any number of times and
    ``await end()``. Status and headers are fixed by the first ``write`` (or ``flush``). A handler
    that returns without ``end()`` gets it called for it.

    Attributes:
        status: the status code (default 200).
        reason: the reason phrase; None sends the standard one.
        headers: a case-insensitive multidict; repeated names go out joined with ``", "``
            (the wire carries one string per name, spec §4.11). Hop-by-hop headers such as
            Content-Length are dropped: the relay frames the response itself. An answer to HEAD
            keeps a Content-Length the handler sets, as the length a GET would get.
    """

    def __init__(self, request: RelayedRequest, channel: _Channel, flush_interval: float | None) -> None:
        self.status = 200
        self.reason: str | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._request = request
        self._channel = channel
        self._flush_interval = flush_interval
        self._lock = asyncio.Lock()
        self._buffer = bytearray()
        self._stream: _BodyStream | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._frozen: tuple[int, str | None, dict[str, str]] | None = None
        self._head_sent = False
        self._finished = False
        self._complete = False
        self._via: Literal["control", "rendezvous"] | None = None
        self._discard_body = request.method == "HEAD"
        #: Body bytes the handler has written so far.
        self.bytes_written = 0

    # -- state ----------------------------------------------------------------------------------
    @property
    def headers_sent(self) -> bool:
        """True once the status line and headers are on the wire."""
        return self._head_sent

    @property
    def finished(self) -> bool:
        """True once ``end()`` was called (or the response was given up)."""
        return self._finished

    @property
    def complete(self) -> bool:
        """True once the whole response was handed to the relay."""
        return self._complete

    @property
    def via(self) -> Literal["control", "rendezvous"] | None:
        """How the response travelled (or is travelling); None before anything was sent."""
        return self._via

    @property
    def via_rendezvous(self) -> bool:
        return self._via == "rendezvous"

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the response has already ended")
        if self._failure is not None:
            raise ClientDisconnected(str(self._failure)) from self._failure

    def _freeze(self) -> None:
        """Fix status, reason and headers as they are now (first write, flush or end).

        Raises:
            ValueError: a status the relay cannot pass on.
        """
        if self._frozen is not None:
            return
        status = int(self.status)
        if not 200 <= status <= 999:
            raise ValueError(f"status {status} cannot be relayed (use 200-999; 1xx is not relayed)")
        headers: dict[str, str] = {}
        index: dict[str, str] = {}
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in _DROPPED_RESPONSE_HEADERS and not (lower == "content-length" and self._discard_body):
                continue  # a HEAD answer keeps its Content-Length: the length a GET would get
            if lower in index:
                headers[index[lower]] += f", {value}"
            else:
                index[lower] = name
                headers[name] = str(value)
        reason = self.reason if self.reason is not None else _phrase(status)
        self._frozen = (status, reason, headers)

    def _head(self, body: bool) -> str:
        self._freeze()
        assert self._frozen is not None
        status, reason, headers = self._frozen
        return response_message(ResponseHead(self._request.id, status, reason, headers, body))

    # -- writing --------------------------------------------------------------------------------
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data* as part of the body; waits while the relay is not taking data fast enough.

        Raises:
            ClientDisconnected: the response cannot be delivered any more.
            RuntimeError: the response has ended.
        """
        if type(data) is not bytes:  # a copy only of what may change under us
            data = bytes(data)
        async with self._lock:
            self._check_open()
            self._freeze()
            if self._discard_body:
                data = b""
            if not data:
                return
            self.bytes_written += len(data)
            if self._stream is None:
                if self._channel.control is not None and len(self._buffer) + len(data) <= MAX_CONTROL_BODY:
                    self._buffer += data
                    self._arm_timer()
                    return
                await self._open_stream()
            assert self._stream is not None
            await self._stream.write(data)

    async def flush(self) -> None:
        """Send the status, headers and what is buffered now, over a rendezvous, and stream from here.

        Useful for event streams, whose first bytes should not wait for the flush interval.
        """
        async with self._lock:
            self._check_open()
            if self._stream is None:
                await self._open_stream()

    async def end(self, data: bytes | bytearray | memoryview = b"") -> None:
        """Finish the response, with *data* as the last part of the body. A second call does nothing.

        Raises:
            ClientDisconnected: the response cannot be delivered.
        """
        if type(data) is not bytes:  # a copy only of what may change under us
            data = bytes(data)
        async with self._lock:
            if self._finished:
                if data:
                    raise RuntimeError("the response has already ended")
                return
            self._check_open()
            self._cancel_timer()
            if self._discard_body:
                data = b""
            self.bytes_written += len(data)
            if self._stream is not None:
                self._finished = True
                await self._stream.finish(data)
                self._complete = True
                return
            body = bytes(self._buffer) + data if self._buffer else data
            head = self._head(bool(body))  # may raise ValueError: then nothing is marked as ended
            self._buffer.clear()
            self._finished = True
            if self._channel.control is not None and len(body) <= MAX_CONTROL_BODY:
                self._via = "control"
                try:
                    await self._channel.control.send(*((head, body) if body else (head,)))
                except _WsClosed as exc:
                    raise ClientDisconnected("The control channel closed before the response was sent") from exc
                self._head_sent = self._complete = True
                return
            ws = await self._channel.rendezvous()
            self._via = "rendezvous"
            try:
                if body:
                    await send_together(ws, (head, body))
                else:
                    await ws.send(head)
                self._head_sent = True
            except _WsClosed as exc:
                raise ClientDisconnected("The rendezvous closed before the response was sent") from exc
            self._complete = True

    async def _open_stream(self) -> None:
        """Switch to streaming over the rendezvous: head first, then what was buffered (lock held)."""
        self._cancel_timer()
        head = self._head(True)
        ws = await self._channel.rendezvous()
        self._via = "rendezvous"
        try:
            await ws.send(head)
        except _WsClosed as exc:
            raise ClientDisconnected("The rendezvous closed before the response was sent") from exc
        self._head_sent = True
        self._stream = _BodyStream(ws)
        if self._buffer:
            buffered = bytes(self._buffer)
            self._buffer.clear()
            await self._stream.write(buffered)

    # -- the flush timer ------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        if self._timer is None and self._flusher is None and self._flush_interval is not None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_interval, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._flusher = asyncio.ensure_future(self._timed_flush())

    async def _timed_flush(self) -> None:
        async with self._lock:
            if self._finished or self._stream is not None or self._failure is not None:
                return
            try:
                await self._open_stream()
            except Exception as exc:
                # The handler learns of it on its next write or end.
                self._failure = exc
                _log.info("event=response_flush_failed request=%s error=%r", self._request.id, exc)

    # -- the runner's side ----------------------------------------------------------------------
    async def _settle(self) -> None:
        """Stop the flush timer and let a flush in progress finish, so the state is final."""
        self._cancel_timer()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            await asyncio.wait((flusher,))  # it records its own failure in _failure

    async def _fail(self, status: int, reason: str) -> None:
        """Replace whatever was buffered with an error answer; if the head is out, cut the response."""
        await self._settle()
        if self._head_sent:
            await self._abort()
            return
        if self._finished:
            return
        self._buffer.clear()
        self._failure = self._frozen = None
        self.bytes_written = 0
        self.status, self.reason = status, reason
        self.headers = CIMultiDict({"Content-Type": "text/plain; charset=utf-8"})
        await self.end(reason.encode())

    async def _abort(self) -> None:
        """Give up: a response already under way is cut, so the HTTP client sees it fail."""
        self._finished = True
        self._cancel_timer()
        if self._complete:
            return
        if self._stream is not None:
            await self._stream.abort()
        elif self._head_sent and self._channel.ws is not None:
            with contextlib.suppress(Exception):
                await self._channel.ws.close(1011, "The request handler failed")

    @property
    def _needs_cleanup(self) -> bool:
        """A timer, a flusher or a stream is left: most answers that went inline have none."""
        return self._timer is not None or self._flusher is not None or self._stream is not None

    async def _cleanup(self) -> None:
        self._cancel_timer()
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            await asyncio.wait((flusher,))
        if self._stream is not None:
            self._stream.discard()

    def __repr__(self) -> str:
        return (f"<RelayedResponse request={self._request.id} status={self.status} "
                f"via={self._via or '-'} finished={self._finished}>")


RequestHandler = Callable[[RelayedRequest, RelayedResponse], Awaitable[None]]


# -- dispatching -------------------------------------------------------------------------------


class RequestDispatcher:
    """Runs each relayed request in its own task and answers on the right socket.

    Owned by :class:`~hyrelay.client.listener.HybridConnectionListener`; not public API.
    """

    def __init__(self, *, handler: Callable[[], RequestHandler | None], entity: str, ws_base: str,
                 connect: Callable[[str], Awaitable[ClientConnection]], flush_interval: float | None,
                 max_concurrent: int, listener_id: str) -> None:
        self._handler = handler
        self.entity = entity
        self._connect = connect
        self.flush_interval = flush_interval
        self.max_concurrent = max_concurrent
        self.listener_id = listener_id
        self.in_flight = 0
        parts = urlsplit(ws_base)
        self.scheme = "https" if parts.scheme in ("wss", "https") else "http"
        self.server = (parts.hostname or "localhost", parts.port or (443 if self.scheme == "https" else 80))

    def _request(self, message: HttpRequest, body: RequestBody) -> RelayedRequest:
        return RelayedRequest(message, self.entity, body, scheme=self.scheme, server=self.server)

    async def serve_inline(self, control: ControlLink, message: HttpRequest, body: bytes,
                           problem: tuple[int, str] | None = None) -> None:
        """A request that came whole on the control channel; *problem* answers it without the handler."""
        request = self._request(message, RequestBody.of(body))
        multicast = _MULTICAST in map(str.lower, message.headers or ())
        channel = _Channel(_DISCARD if multicast else control, message.address, self._connect)
        try:
            if problem is not None:
                response = RelayedResponse(request, channel, self.flush_interval)
                await self._answer_error(response, problem[0], f"{problem[1]}. TrackingId:{request.id}")
                return
            await self._run(request, channel)
        finally:
            if channel.owned:  # opened a rendezvous for the answer: close it
                await channel.close()

    async def serve_rendezvous(self, stub: HttpRequest) -> None:
        """A stub: fetch the request over its rendezvous, answer there, and serve any further
        requests the relay sends on that socket (hyco-https does; our relay closes it instead)."""
        try:
            ws = await self._connect(stub.address)
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            _log.warning("event=request_rendezvous_failed listener=%s request=%s error=%r",
                         self.listener_id, stub.id, exc)
            return
        try:
            while True:
                try:
                    text = await asyncio.wait_for(read_message(ws, MAX_CONTROL_MESSAGE, 0),
                                                  RENDEZVOUS_IDLE_TIMEOUT)
                except TimeoutError:
                    return
                if not isinstance(text, str):
                    _log.warning("event=request_rendezvous_invalid listener=%s request=%s reason=not_a_request",
                                 self.listener_id, stub.id)
                    return
                message = _parse_full_request(text)
                if message is None:
                    _log.warning("event=request_rendezvous_invalid listener=%s request=%s reason=bad_request_message",
                                 self.listener_id, stub.id)
                    return
                body = RequestBody(_ws_body(ws)) if message.body else RequestBody()
                response = await self._run(self._request(message, body),
                                           _Channel(None, message.address, self._connect, ws))
                # The next message can only be read once this body is out of the way.
                if not response.complete or not await body.drain(MAX_DRAIN):
                    return
        except (_WsClosed, ClientDisconnected):
            return
        finally:
            with contextlib.suppress(Exception):
                await ws.close(1000, "")

    async def _run(self, request: RelayedRequest, channel: _Channel) -> RelayedResponse:
        response = RelayedResponse(request, channel, self.flush_interval)
        handler = self._handler()
        self.in_flight += 1
        try:
            if handler is None:
                await self._answer_error(response, 501, f"RequestHandler has not been configured. "
                                                        f"TrackingId:{request.id}")
                return response
            if self.in_flight > self.max_concurrent:
                await self._answer_error(response, 503, f"The listener has too many requests in progress. "
                                                        f"TrackingId:{request.id}")
                return response
            try:
                await handler(request, response)
                if not response.finished:
                    await response.end()
            except ClientDisconnected as exc:
                _log.info("event=request_abandoned listener=%s request=%s reason=%r",
                          self.listener_id, request.id, str(exc))
                await response._abort()
            except Exception as exc:
                _log.exception("event=request_handler_failed listener=%s request=%s tracking_id=%s "
                               "method=%s target=%r", self.listener_id, request.id, request.id,
                               request.method, request.target)
                await self._answer_error(response, 500, f"The request handler raised {type(exc).__name__}. "
                                                        f"TrackingId:{request.id}")
            else:
                _log.debug("event=request_answered listener=%s request=%s method=%s target=%r status=%s "
                           "via=%s bytes_out=%d", self.listener_id, request.id, request.method,
                           request.target, response.status, response.via, response.bytes_written)
            return response
        except asyncio.CancelledError:
            await asyncio.shield(response._abort())
            raise
        finally:
            self.in_flight -= 1
            if response._needs_cleanup:
                await response._cleanup()

    async def _answer_error(self, response: RelayedResponse, status: int, reason: str) -> None:
        try:
            await response._fail(status, reason)
        except (ClientDisconnected, ValueError) as exc:
            _log.info("event=error_response_failed listener=%s request=%s status=%d error=%r",
                      self.listener_id, response._request.id, status, exc)


def _parse_full_request(text: str) -> HttpRequest | None:
    """A full ``request`` (with ``method``) from *text*, or None."""
    message = decode_request(text)
    if message is not None:
        return None if message.is_stub else message
    try:
        command = parse_relay_message(text)
        if not isinstance(command, RelayCommand) or command.name != "request":
            return None
        message = parse_request(command.body)
    except ProtocolViolation:
        return None
    return None if message.is_stub else message
