"""One relayed HTTP request while it waits for, and streams, its response.

Response heads and bodies arrive in engine callbacks (frames on a control channel or a
rendezvous). An :class:`HttpExchange` routes them to a :class:`ResponseSink`, whichever HTTP
front end serves the client: the relay's own HTTP/1.1 connection writes them straight to its
socket; :class:`ResponseQueue` turns them into an awaitable head and an async body stream for a
coroutine. Either pauses the listener's socket while the client reads slower than the listener
writes, so nothing buffers without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..protocol.errors import BadGateway, GatewayTimeout, InternalError, RelayError, ServerBusy
from ..protocol.messages import MalformedResponse, ResponseHead
from .engine import WSTransport

__all__ = ["HttpExchange", "ResponseQueue", "ResponseRouter", "ResponseSink", "SLOW_CLIENT_LIMIT"]

_log = logging.getLogger("hyrelay.server")

#: Pause the listener's socket once this much response body waits for a slow HTTP client.
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
#: A client that leaves this much of an answer streaming on a control channel unread is cut: pausing
#: the control channel would stall every other request of that listener behind this client.
SLOW_CLIENT_LIMIT = 4 << 20


class ResponseSink(Protocol):
    """Where one exchange's response goes; every method is a synchronous engine callback."""

    def response_head(self, head: ResponseHead) -> None: ...

    def response_body(self, data: bytes, fin: bool, source: WSTransport) -> None: ...

    def response_failed(self, err: RelayError) -> None: ...

    def release(self) -> None:
        """The client went away: resume a listener socket paused on its behalf."""


class HttpExchange:
    """The relay's half of one HTTP request: routes its response to a sink."""

    __slots__ = ("id", "hc_name", "secret", "sink", "rendezvous", "rendezvous_waiter", "discard",
                 "head_seen", "_ended", "bytes_in", "channel")

    def __init__(self, request_id: str, hc_name: str, secret: str, sink: ResponseSink) -> None:
        self.id = request_id
        self.hc_name = hc_name
        self.secret = secret
        self.sink = sink
        #: The listener's rendezvous socket for this request, once it opened one (a RequestRendezvous).
        self.rendezvous: Any = None
        #: Called with the rendezvous (or a RelayError) by whoever streams the request over it.
        self.rendezvous_waiter: Callable[[Any], None] | None = None
        self.discard = False
        self.head_seen = False
        self._ended = False
        #: Request body bytes delivered to the listener (BytesTransferred).
        self.bytes_in = 0
        #: The control channel the request went to (a ControlChannel).
        self.channel: Any = None

    # -- engine side (sync callbacks) -----------------------------------------------------------
    def deliver(self, head: ResponseHead) -> None:
        if self.head_seen or self._ended or self.discard:
            return
        self.head_seen = True
        if not head.body:
            self._ended = True
        try:
            self.sink.response_head(head)
        except Exception:
            self._sink_broke()

    def feed(self, data: bytes, fin: bool, source: WSTransport) -> None:
        """A frame of the response body arrived on *source*."""
        if self._ended:
            return
        if fin:
            self._ended = True
        if not self.discard:
            try:
                self.sink.response_body(data, fin, source)
            except Exception:
                self._sink_broke()

    def fail(self, err: RelayError) -> None:
        """The listener side broke: a waiting client gets *err*, a streaming one is cut."""
        if not self._ended:
            self._ended = True
            if not self.discard:
                self.sink.response_failed(err)
        self.opened(err)

    def _sink_broke(self) -> None:
        """A bug on the client's side of the exchange: it gets a 500 (or a cut), and the listener's
        socket, which called us, stays up for everyone else's requests."""
        err = InternalError("The relay failed to relay the response")
        _log.exception("event=internal_error tracking_id=%s request=%s", err.tracking_id, self.id)
        self._ended = True
        with contextlib.suppress(Exception):
            self.sink.response_failed(err)

    def opened(self, rendezvous: Any) -> None:
        """The listener opened this request's rendezvous (or *rendezvous* is why it never will)."""
        if not isinstance(rendezvous, RelayError):
            self.rendezvous = rendezvous
        waiter, self.rendezvous_waiter = self.rendezvous_waiter, None
        if waiter is not None:
            waiter(rendezvous)

    @property
    def body_complete(self) -> bool:
        return self._ended

    def abandon(self) -> None:
        """The HTTP client went away: drop whatever else the listener sends for it."""
        if not self.discard:
            self.discard = True
            self.sink.release()


class ResponseQueue:
    """A sink for a coroutine: the head as a future, the body as an async stream."""

    __slots__ = ("head", "exchange", "abort_client", "_chunks", "_buffered", "_paused", "_whole", "_fed")

    def __init__(self) -> None:
        self.head: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        #: The exchange this queue serves; set as soon as its request is out.
        self.exchange: HttpExchange | None = None
        #: Drops the client's connection: a client too slow to be served is cut at once, not once
        #: its writer, stuck on the client's full socket, gets round to the error.
        self.abort_client: Callable[[], None] | None = None
        self._chunks: asyncio.Queue[bytes | RelayError | None] = asyncio.Queue()
        self._buffered = 0
        self._paused: WSTransport | None = None
        #: A body that came whole in one frame, kept out of the queue so it can go out in one write.
        self._whole: bytes | None = None
        self._fed = False

    def response_head(self, head: ResponseHead) -> None:
        if not self.head.done():
            self.head.set_result(head)

    def response_body(self, data: bytes, fin: bool, source: WSTransport) -> None:
        if fin and not self._fed and self._chunks.empty():
            self._whole = data
            self._chunks.put_nowait(None)
            return
        self._fed = True
        if data:
            self._chunks.put_nowait(data)
            self._buffered += len(data)
            if self._buffered > HIGH_WATER and self._paused is None:
                exchange = self.exchange
                if exchange is None or exchange.rendezvous is not None:
                    self._paused = source  # a socket of this request's own: hold the listener
                    source.underlying_transport.pause_reading()
                elif self._buffered > SLOW_CLIENT_LIMIT:
                    self._cut(exchange)
                    return
        if fin:
            self._chunks.put_nowait(None)

    def _cut(self, exchange: HttpExchange) -> None:
        """Drop what waits and end the response with an error: the client's connection is cut."""
        while not self._chunks.empty():
            self._chunks.get_nowait()
        self._buffered = 0
        exchange.fail(ServerBusy(f"The client left more than {SLOW_CLIENT_LIMIT >> 20} MiB of a response "
                                 "streaming on the listener's control channel unread"))
        if self.abort_client is not None:
            self.abort_client()

    def response_failed(self, err: RelayError) -> None:
        if not self.head.done():
            self.head.set_exception(err)
            self.head.exception()  # retrieved here so an abandoned exchange logs no warning
        else:
            self._chunks.put_nowait(err)

    def whole_body(self) -> bytes | None:
        """The complete body if it came in one frame that has arrived; None if it streams."""
        if self._whole is None:
            return None
        whole, self._whole = self._whole, None
        self._chunks.get_nowait()  # the end marker that followed it
        return whole

    async def body(self, idle_timeout: float | None) -> AsyncIterator[bytes]:
        """The response body as it arrives; an idle gap over *idle_timeout* ends it with 504."""
        while True:
            try:
                item = await asyncio.wait_for(self._chunks.get(), idle_timeout)
            except asyncio.TimeoutError:
                raise GatewayTimeout("The listener stopped sending the response body") from None
            if item is None:
                whole, self._whole = self._whole, None  # a one-frame body that came while we waited
                if whole:
                    yield whole
                return
            if isinstance(item, RelayError):
                raise item
            self._buffered -= len(item)
            if self._paused is not None and self._buffered < LOW_WATER:
                if not self._paused.is_disconnected:
                    self._paused.underlying_transport.resume_reading()
                self._paused = None
            yield item

    def release(self) -> None:
        if self._paused is not None and not self._paused.is_disconnected:
            self._paused.underlying_transport.resume_reading()
        self._paused = None


class _Discard:
    """Body sink for a response nobody waits for (late, duplicate or unknown requestId)."""

    def feed(self, data: bytes, fin: bool, source: WSTransport) -> None:
        pass


_DISCARD = _Discard()


class ResponseRouter:
    """Matches ``response`` messages, and the one binary message after each, to exchanges."""

    __slots__ = ("exchanges", "_body")

    def __init__(self) -> None:
        self.exchanges: dict[str, HttpExchange] = {}
        self._body: HttpExchange | _Discard | None = None

    def on_response(self, head: ResponseHead) -> HttpExchange | None:
        """Route a ``response``; returns its exchange, or None if nobody waits for it."""
        exchange = self.exchanges.pop(head.request_id, None)
        if exchange is None:
            # Late (after a timeout), duplicate, or an answer to a multicast copy: drained, not an error.
            _log.debug("event=response_unmatched request=%s", head.request_id)
        if head.body:
            self._body = exchange if exchange is not None else _DISCARD
        if exchange is not None:
            exchange.deliver(head)
        return exchange

    def on_malformed(self, err: MalformedResponse) -> None:
        """A ``response`` for a known request that cannot be relayed: that client gets a 502."""
        exchange = self.exchanges.pop(err.request_id, None)
        if err.body:
            self._body = _DISCARD
        if exchange is not None:
            exchange.fail(BadGateway(f"The listener sent a malformed response: {err.message}"))

    def on_body_frame(self, data: bytes, fin: bool, source: WSTransport) -> bool:
        """Feed a binary frame to the response it belongs to; False if no body is pending."""
        target = self._body
        if target is None:
            return False
        if fin:
            self._body = None
        target.feed(data, fin, source)
        return True

    def fail_all(self, err: RelayError) -> None:
        body, self._body = self._body, None
        if isinstance(body, HttpExchange):
            body.fail(err)
        exchanges, self.exchanges = self.exchanges, {}  # failing one may finish it, which unregisters it
        for exchange in exchanges.values():
            exchange.fail(err)


