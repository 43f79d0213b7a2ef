"""The relay's own HTTP/1.1 server for relayed requests: nothing between the socket and the listener.

The dispatcher hands over a connection whose first request is for a hybrid connection. Requests
whose Content-Length body fits on the control channel (nearly every API call and page load) are
relayed from callbacks: no task, future or queue per request, and a one-frame answer goes out
in one write. The first request that needs more (a chunked or large body, ``Expect``, an
upgrade, the relay's own ``/$`` endpoints, the runtime entity GET) is handed, with the rest of
the connection, to the aiohttp application, which streams request bodies over rendezvous.
Heads are framed here and parsed by httptools (llhttp), which also validates the framing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING

import httptools

from ..protocol.errors import BadRequest, GatewayTimeout, HeadersTooLarge, RelayError, RequestTimeout
from ..protocol.headers import ResponseHeaders, add_via, response_headers
from ..protocol.messages import MAX_INLINE_REQUEST, ResponseHead
from .engine import WSTransport
from .exchange import SLOW_CLIENT_LIMIT, HttpExchange
from .handshake import error_response, json_response, utc_timestamp
from .httprelay import as_relay_error, no_answer_in_time, reason_phrase

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["HttpConnection"]

_access = logging.getLogger("hyrelay.access")

#: An idle keep-alive connection is closed after this many seconds (aiohttp's default too).
KEEPALIVE = 75.0
#: Request headers whose presence sends the connection to the aiohttp front end.
_HANDED_OVER = frozenset({"transfer-encoding", "expect", "upgrade", "x-process-at"})
_NO_HEADERS = ResponseHeaders([], None, None, False)


class HttpConnection(asyncio.Protocol):
    """One client connection; serves one request at a time (pipelined ones wait their turn)."""

    __slots__ = ("relay", "http", "http_factory", "max_head", "transport", "peer", "buf", "parser", "_url",
                 "_headers", "_index", "_waiting", "exchange", "method", "raw_path", "hc_name", "started",
                 "keep_alive", "_response", "_framing", "sent", "_timer", "_timeout", "_deadline", "_last",
                 "_paused", "_writable", "_idle", "_gone", "_reading", "_status", "_http10", "_eof",
                 "_successor", "_loop", "_tracker")

    def __init__(self, relay: "Relay", http_factory: Callable[[], asyncio.Protocol], max_head: int) -> None:
        self.relay = relay
        self.http = relay.http
        self.http_factory = http_factory
        self.max_head = max_head
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer: tuple | None = None
        self.buf = b""
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        #: Lower-case header name -> first value, for the few the relay looks at.
        self._index: dict[str, str] = {}
        #: (head length, body length, content length given) of a head whose body has not all arrived.
        self._waiting: tuple[int, int, bool] | None = None
        # The request in flight.
        self.exchange: HttpExchange | None = None
        self.method = ""
        self.raw_path = ""
        self.hc_name: str | None = None
        self.started = 0.0
        self.keep_alive = True
        self._response: ResponseHead | None = None  # a head waiting for its first body frame
        #: How the answer's body is framed once its head is out: b"length", b"chunked", b"close"
        #: (HTTP/1.0 stream) or b"none" (HEAD, 204, 304); b"" while no head has gone out.
        self._framing = b""
        self.sent = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timeout: float | None = None
        #: When the answer's head must have arrived, for the request in flight.
        self._deadline = 0.0
        self._last = 0.0
        self._paused: WSTransport | None = None  # the listener socket paused for a slow client
        self._writable = True
        self._idle: asyncio.TimerHandle | None = None
        self._gone = False
        self._reading = True
        self._status = 0
        self._http10 = False
        #: The client shut its sending side: nothing more will come.
        self._eof = False
        self._successor: asyncio.Protocol | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        #: The decoded path of the request in flight, for error reasons.
        self._tracker: str | None = None

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        self._headers.append((key, text))
        lower = key.lower()
        if lower not in self._index:
            self._index[lower] = text

    def on_headers_complete(self) -> None:
        # Read here: llhttp resets both once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        self._http10 = self.parser.get_http_version() == "1.0"

    # -- asyncio protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.http.connections.add(self)
        # Kept: asyncio.get_running_loop() costs a getpid() system call on CPython 3.11.
        self._loop = loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._idle = loop.call_later(KEEPALIVE, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if not self.buf and self.exchange is None:
            self._last = self._loop.time()  # a new request begins: the idle clock restarts
        self.buf = self.buf + data if self.buf else data
        if self.exchange is None and self._writable:
            self._next()
        elif len(self.buf) > self.max_head + MAX_INLINE_REQUEST and self._reading:
            # A pipelining client waits for its earlier answers, and for reading those it has.
            self._reading = False
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # A client may shut its sending side once its request is out (HTTP/1.0 tools, `nc -N`):
        # answer what it sent, then close. With nothing pending, close now.
        self._eof = True
        if self.exchange is None and not self.buf:
            return None
        self._next()  # a request that came whole is served; the close follows the last answer
        if self._successor is not None:  # handed over meanwhile: the application hears of the EOF
            return self._successor.eof_received()
        return True if not self._gone and not self.transport.is_closing() else None

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self.release()
        if self.exchange is None and not self._gone:
            self._next()  # pipelined requests waited for the client to read its earlier answers

    def connection_lost(self, exc: Exception | None) -> None:
        self._detach()
        if self.exchange is not None:
            _access.info("event=http_client_gone method=%s path=%s bytes_out=%s", self.method, self.raw_path,
                         self.sent)
            self._end()

    def _detach(self) -> None:
        """This protocol is done with the connection (it closed, or aiohttp has it now)."""
        self._gone = True
        self.http.connections.discard(self)
        for timer in (self._idle, self._timer):
            if timer is not None:
                timer.cancel()  # or this connection would stay in memory until they fire

    # -- requests --------------------------------------------------------------------------------
    def _next(self) -> None:
        """Start every complete request in the buffer, one at a time; close after the last if the client is done."""
        self._advance()
        if self._gone or self.exchange is not None or not self._writable:
            return  # resume_writing() comes back here
        if not self._reading:  # what is left is at most part of one request: read the rest
            self._reading = True
            self.transport.resume_reading()
        if self._eof:
            self.transport.close()

    def _advance(self) -> None:
        # Not while the client leaves answers unread: a pipelining client that never reads would
        # otherwise have every answer buffered here.
        while (self.exchange is None and self._writable and not self._gone and self.buf
               and not self.transport.is_closing()):
            buf = self.buf
            if self._waiting is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0 or end + 4 > self.max_head:
                    if len(buf) > self.max_head or end >= 0:
                        self._refuse(HeadersTooLarge(f"The request head is larger than {self.max_head} bytes"))
                    return
                self._url, self._headers, self._index = b"", [], {}
                try:
                    self.parser.feed_data(memoryview(buf)[: end + 4])
                except httptools.HttpParserUpgrade:
                    self._hand_over()
                    return
                except httptools.HttpParserError as exc:
                    self._refuse(BadRequest(f"Malformed HTTP request: {exc}"))
                    return
                declared = self._index.get("content-length")
                try:
                    length = int(declared) if declared is not None else 0
                except ValueError:  # llhttp lets a list through; aiohttp refuses it properly
                    length = MAX_INLINE_REQUEST
                if (self._url[:2] == b"/$" or self._url[:1] != b"/" or end + 4 + length > MAX_INLINE_REQUEST
                        or not _HANDED_OVER.isdisjoint(self._index) or self.parser.get_method() == b"CONNECT"):
                    self._hand_over()
                    return
                self._waiting = (end + 4, length, declared is not None)
            head_len, length, declared = self._waiting
            if len(buf) < head_len + length:
                return  # the rest of the body is on its way
            self._waiting = None
            body = buf[head_len:head_len + length]
            if length:
                self.parser.feed_data(body)  # completes the message in the parser, ready for the next
            self.buf = buf[head_len + length:]
            self._relay(body, length if declared else None)

    def _hand_over(self) -> None:
        """Give the connection, from the request at the front of the buffer on, to aiohttp."""
        proto = self._successor = self.http_factory()
        buf, self.buf = self.buf, b""
        self._detach()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if not self._reading:
            self.transport.resume_reading()
        proto.data_received(buf)

    def _relay(self, body: bytes, content_length: int | None) -> None:
        http = self.http
        self.started = time.monotonic()
        self.method = method = self.parser.get_method().decode()
        target = self._url.decode("latin-1")
        self.raw_path, decoded = http.tracker(target)
        self._tracker = decoded
        self.hc_name, self.sent, self._response = None, 0, None
        try:
            hc = http.resolve(decoded)
            self.hc_name = hc.name
            route = http.route(hc, target, decoded, self._headers, self._index.get, content_length)
            if route.hc.multicast:
                reached = http.multicast(route, method, self.peer, body)
                self._write(json_response(202, "Accepted", {"listeners": reached}, {"Hyrelay-Listeners": str(reached)},
                                          close=not self.keep_alive))
                http.finished(self.hc_name, method, self.raw_path, 202, self.started, 0)
                return
            self.exchange, _ = http.open(route, method, self.peer, self, inline_body=body)
        except Exception as exc:
            err = as_relay_error(exc)
            http.finished(self.hc_name, method, self.raw_path, err.status, self.started, 0, err=err)
            self._write_error(err)
            return
        self._timeout = timeout = http.timeout(route.hc)
        if timeout:
            # One timer per connection, moved only when a deadline comes sooner than it fires: no
            # timer made and cancelled per request (it fires at most once per timeout and re-arms).
            self._deadline = deadline = self._loop.time() + timeout
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        """The request timer: no head in time is a 504; so is a stream that went quiet that long."""
        self._timer = None
        exchange = self.exchange
        if exchange is None or self._timeout is None:
            return  # idle: the timer stays off until the next request
        loop = self._loop
        if not exchange.head_seen:
            if loop.time() + 0.001 < self._deadline:  # armed for an earlier request: this one has longer
                self._timer = loop.call_at(self._deadline, self._tick)
                return
            exchange.fail(no_answer_in_time())
            return
        quiet = loop.time() - self._last
        if quiet >= self._timeout and self._paused is None and self._writable:
            exchange.fail(GatewayTimeout("The listener stopped sending the response body"))
        else:  # the client is the slow one, or data flowed meanwhile
            self._timer = loop.call_later(max(self._timeout - quiet, 0.05), self._tick)

    # -- the response (ResponseSink) -------------------------------------------------------------
    def response_head(self, head: ResponseHead) -> None:
        if head.body:
            self._response = head  # framed once the first body frame shows whether it is the whole body
            self._last = self._loop.time()
            return
        self.transport.write(self._head(head, 0))
        self._done(head.status)

    def response_body(self, data: bytes, fin: bool, source: WSTransport) -> None:
        head, self._response = self._response, None
        write = self.transport.write
        if head is not None:
            self._status = head.status
            if fin:  # the whole body in one frame: one write with a Content-Length
                out = self._head(head, len(data))
                if self._framing != b"none":
                    out += data
                    self.sent = len(data)
                write(out)
                self._done(head.status)
                return
            write(self._head(head, None))
        if data and self._framing != b"none":
            write(b"%x\r\n%b\r\n" % (len(data), data) if self._framing == b"chunked" else data)
            self.sent += len(data)
        if fin:
            if self._framing == b"chunked":
                write(b"0\r\n\r\n")
            self._done(self._status)
            return
        self._last = self._loop.time()
        if self._writable or self._paused is not None:
            return
        if self.exchange is not None and self.exchange.rendezvous is not None:
            self._paused = source  # the client reads slower than the listener writes: hold the listener
            source.underlying_transport.pause_reading()
        elif self.transport.get_write_buffer_size() > SLOW_CLIENT_LIMIT:
            # The answer streams on the control channel: pausing it would stall every other request
            # of that listener behind this client, so the client is cut instead.
            _access.warning("event=http_client_too_slow method=%s path=%s bytes_out=%s buffered=%s",
                            self.method, self.raw_path, self.sent, self.transport.get_write_buffer_size())
            self.transport.abort()
            self._end()

    def response_failed(self, err: RelayError) -> None:
        http = self.http
        if self._framing:  # the head is out: cut the connection so the client sees a truncated body
            _access.warning("event=http_response_cut method=%s path=%s bytes_out=%s tracking_id=%s reason=%r",
                            self.method, self.raw_path, self.sent, err.tracking_id, err.message)
            if self._framing == b"close":
                self.transport.abort()  # a close would end a close-delimited body as if it were complete
            else:
                self.transport.close()
            self._end()
            return
        http.finished(self.hc_name, self.method, self.raw_path, err.status, self.started, 0, err=err)
        self._end()
        self._write_error(err)
        self._next()

    def release(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.is_disconnected:
            paused.underlying_transport.resume_reading()

    # -- helpers ---------------------------------------------------------------------------------
    def _head(self, head: ResponseHead, length: int | None) -> bytes:
        """The status line and headers; *length* None means the body streams."""
        status = head.status
        lines = [f"HTTP/1.1 {status} {reason_phrase(status, head.description)}"]
        sorted_out = response_headers(head.headers) if head.headers else _NO_HEADERS
        for name, value in sorted_out.kept:
            lines.append(f"{name}: {value}")
        lines.append(f"Via: {add_via(sorted_out.via, self._index.get('host') or self.relay.namespace)}")
        if not sorted_out.has_date:
            lines.append(f"Date: {_http_date()}")
        if self.method == "HEAD" or status in (204, 304):
            self._framing = b"none"
            declared = sorted_out.content_length
            if self.method == "HEAD" and declared is not None and declared.isdigit():
                lines.append(f"Content-Length: {declared}")  # what a GET would have carried
        elif length is not None:
            self._framing = b"length"
            lines.append(f"Content-Length: {length}")
        elif self._http10:
            self._framing = b"close"  # HTTP/1.0 has no chunked encoding: the end of the body is the close
            self.keep_alive = False
        else:
            self._framing = b"chunked"
            lines.append("Transfer-Encoding: chunked")
        if not self.keep_alive:
            lines.append("Connection: close")
        elif self._http10:
            lines.append("Connection: keep-alive")  # an HTTP/1.0 client closes unless told otherwise
        lines.append("\r\n")
        return "\r\n".join(lines).encode()

    def _done(self, status: int) -> None:
        """The response is complete: count it, and go on with the next request."""
        exchange = self.exchange
        if exchange is not None:
            self.http.finished(self.hc_name, self.method, self.raw_path, status, self.started,
                                     self.sent + exchange.bytes_in, exchange.id)
        self._end()
        if not self.keep_alive:
            self.transport.close()
            return
        self._next()

    def _end(self) -> None:
        """Forget the request in flight (the request timer stays; it finds nothing to do)."""
        self._timeout = None
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            self.http.close(exchange)  # releases a paused listener socket
        self._framing = b""
        self._response = None
        if not self._gone:
            self._last = self._loop.time()

    def _write_error(self, err: RelayError) -> None:
        tracker = "" if self._tracker is None else f"{self.relay.namespace}:{self._tracker}"
        self._write(error_response(err, err.reason(tracker, utc_timestamp()), close=not self.keep_alive))

    def _write(self, response: bytes) -> None:
        """A whole response of the relay's own; the connection closes after it unless kept alive."""
        self.transport.write(response)
        if not self.keep_alive:
            self.transport.close()

    def _refuse(self, err: RelayError) -> None:
        """A request the relay cannot read: answer and close (the framing is lost)."""
        self.keep_alive = False
        self.buf = b""
        self._tracker = None  # no request was read: no entity to name
        self._write_error(err)
        self._gone = True

    def _check_idle(self) -> None:
        loop = self._loop
        self._idle = None
        if self._gone:
            return
        quiet = loop.time() - self._last
        if self.exchange is not None or quiet < KEEPALIVE:
            self._idle = loop.call_later(max(KEEPALIVE - quiet, 1.0), self._check_idle)
        elif self.buf:  # half a request, for longer than a whole one may take
            self._refuse(RequestTimeout(f"The request did not arrive within {KEEPALIVE:g} seconds"))
        else:
            self.transport.close()


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header's value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]
