"""Relayed HTTP (spec §4): any request to ``/{hc}[/more]`` goes to one listener of that hybrid connection.

Small requests whose body is already read travel inline on the control channel; larger or
chunked ones go by rendezvous and stream. Responses stream back as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from ..protocol.addresses import RENDEZVOUS_PARAM, build_address, filter_query, path_segments, query_params
from ..protocol.errors import (BadGateway, BadRequest, EndpointNotFound, GatewayTimeout, HeadersTooLarge, InternalError,
                               RelayError,
                               RequestTooLarge, safe_reason)
from ..protocol.headers import MULTICAST_HEADER, add_via, request_headers, response_headers
from ..protocol.messages import MAX_HEADER_METADATA, MAX_INLINE_REQUEST, Endpoint, HttpRequest, request_message
from ..store.model import HybridConnection
from .control import ControlChannel, RequestRendezvous
from .exchange import HttpExchange, ResponseQueue, ResponseSink

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["HttpRelay", "Route", "as_relay_error", "no_answer_in_time", "reason_phrase"]

_log = logging.getLogger("hyrelay.server")
_access = logging.getLogger("hyrelay.access")

#: Request bodies stream to the listener in fragments of this size.
CHUNK = 64 * 1024
#: A listener with more than this waiting in its socket is skipped by multicast (and counted out).
MULTICAST_MAX_BUFFER = 4 << 20


@dataclass(slots=True)
class Route:
    """Where a relayed request goes, and what of it travels (everything checked but the body)."""

    hc: HybridConnection
    #: Listeners to try, first choice first (every listener, on a multicast hybrid connection).
    candidates: list[ControlChannel]
    #: The headers the listener gets (no auth material, no hop-by-hop headers).
    headers: dict[str, str]
    head_size: int
    raw_path: str
    #: The path and the query without its ``sb-hc-*`` parameters.
    target: str


class HttpRelay:
    """The HTTP half of the relay; shares the router and the store snapshot with :class:`Relay`."""

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        #: Client connections served by the relay's own HTTP front end (closed on shutdown).
        self.connections: set[asyncio.Protocol] = set()

    def timeout(self, hc: HybridConnection) -> float | None:
        """How long a listener may take to answer (and to go quiet while streaming); None: no limit."""
        value = self.relay.config.request_timeout if hc.request_timeout is None else hc.request_timeout
        return value or None  # 0 means no limit

    @staticmethod
    def tracker(raw_target: str) -> tuple[str, str]:
        """The raw path and the decoded entity path of a request target (for lookups and reasons)."""
        raw_path = raw_target.partition("?")[0]
        if "%" not in raw_path and "//" not in raw_path:
            return raw_path, raw_path.strip("/")  # the common case, without a split and a join
        return raw_path, "/".join(unquote(s) for s in raw_path.split("/") if s)

    def resolve(self, decoded: str) -> HybridConnection:
        """The hybrid connection a decoded request path names.

        Raises:
            EndpointNotFound: no hybrid connection matches.
        """
        found = self.relay.snapshot.find_hc(self.relay.namespace, decoded)
        if found is None:
            raise EndpointNotFound(f"Endpoint does not exist: no hybrid connection matches "
                                   f"'{safe_reason(decoded, 200)}'")
        return found[0]

    def route(self, hc: HybridConnection, raw_target: str, decoded: str, headers: list[tuple[str, str]],
              get: Callable[[str], str | None], content_length: int | None) -> Route:
        """Authorize and choose a listener for a request to *hc*; *get* looks up a header by lower-case name.

        *decoded* is the target's path, percent-decoded (see :meth:`tracker`).

        Raises:
            RelayError: 401/403 token, 502 no listener, 503 all busy, 431, 413.
        """
        relay = self.relay
        raw_path, _, raw_query = raw_target.partition("?")
        evaluated_authorization = False
        if hc.requires_client_authorization:
            token = get("servicebusauthorization") or query_params(raw_query).get("sb-hc-token")
            if not token and get("authorization") is not None:
                token, evaluated_authorization = get("authorization"), True
            relay.authorize_sender(token, hc, path_segments(decoded))
        key = relay.hc_key(hc.name)
        allow = get("microsoft-relay-allowedlisteners")
        deny = get("microsoft-relay-disallowedlisteners")
        allowed = disallowed = None
        if allow is not None or deny is not None:  # rare: no two calls per request otherwise
            allowed, disallowed = relay.id_set(allow), relay.id_set(deny)
        if hc.multicast:  # every listener, even none; fan_out skips those far behind
            candidates = relay.router.choose(key, allowed, disallowed)
        else:
            candidates = relay.choose(key, hc.name, allowed, disallowed, BadGateway)
        relayed = request_headers(headers, strip_authorization=evaluated_authorization)
        head_size = sum(map(len, relayed)) + sum(map(len, relayed.values())) + 4 * len(relayed)
        if head_size > MAX_HEADER_METADATA:
            raise HeadersTooLarge(f"The request headers are {head_size} bytes; at most "
                                  f"{MAX_HEADER_METADATA} can be relayed")
        limit = relay.config.max_request_body
        if limit is not None and content_length is not None and content_length > limit:
            raise RequestTooLarge(f"The request body is {content_length} bytes; this relay accepts at most {limit}")
        app_query = filter_query(raw_query) if raw_query else ""
        return Route(hc, candidates, relayed, head_size, raw_path, raw_path + ("?" + app_query if app_query else ""))

    def open(self, route: Route, method: str, peer: tuple | None, sink: ResponseSink, *,
             inline_body: bytes | None) -> tuple[HttpExchange, HttpRequest]:
        """Send a request to the first candidate: inline with *inline_body*, else as a rendezvous stub.

        Returns the exchange (registered until :meth:`close`) and the full request, which a
        rendezvous stream sends later.

        Raises:
            BadGateway: the listener's socket closed before the request went out.
        """
        channel = route.candidates[0]
        request_id, secret = _new_ids()
        exchange = HttpExchange(request_id, route.hc.name, secret, sink)
        exchange.channel = channel
        # Both ids are URL-safe already: no quoting needed (this runs for every request).
        address = (f"{channel.base_url}/$hc/{route.raw_path.lstrip('/')}?sb-hc-action=request"
                   f"&sb-hc-id={request_id}&sb-hc-{RENDEZVOUS_PARAM}={secret}")
        full = HttpRequest(address, request_id, route.target, method, _endpoint(peer), route.headers, bool(inline_body))
        self.relay.router.add_pending(secret, exchange)
        channel.responses.exchanges[request_id] = exchange
        if inline_body is not None:
            sent = channel.send_text(request_message(full))
            if sent and inline_body:
                channel.send_binary(inline_body, first=True, fin=True)  # right after its request: never interleaved
                exchange.bytes_in = len(inline_body)
        else:
            sent = channel.send_text(request_message(HttpRequest(address, request_id)))
        if not sent:
            self.close(exchange)
            raise BadGateway("The listener disconnected before the request could be delivered")
        return exchange, full

    def close(self, exchange: HttpExchange) -> None:
        """Forget a finished (or failed) exchange and close its rendezvous."""
        exchange.abandon()
        self.relay.router.drop_pending(exchange.secret)
        if exchange.channel is not None:
            exchange.channel.responses.exchanges.pop(exchange.id, None)
        if exchange.rendezvous is not None:
            exchange.rendezvous.close(1000, "")

    def multicast(self, route: Route, method: str, peer: tuple | None, body: bytes) -> int:
        """Deliver to every listener of a multicast hybrid connection; returns how many it reached."""
        return fan_out(route.candidates, route.raw_path, route.target, method, route.headers, peer, body)

    def finished(self, hc_name: str | None, method: str, raw_path: str, status: int, started: float,
                 nbytes: int, request: str = "", err: RelayError | None = None) -> None:
        """Count and log one request; an unknown name is never counted (names are attacker-chosen)."""
        if hc_name is not None:
            self.relay.observer.http_request(hc_name, method, status, time.monotonic() - started, nbytes)
        if err is not None:
            _access.info("event=http_request method=%s path=%s status=%s tracking_id=%s reason=%r",
                         method, raw_path, status, err.tracking_id, err.message)
        elif _access.isEnabledFor(logging.INFO):
            _access.info("event=http_request method=%s path=%s status=%s bytes=%s ms=%.1f request=%s",
                         method, raw_path, status, nbytes, (time.monotonic() - started) * 1000, request)

    async def handle(self, request: web.Request, error_json) -> web.StreamResponse:
        """Relay *request* (the aiohttp front end); failures are JSON errors without ``Via`` (spec §4.9)."""
        started = time.monotonic()
        relay = self.relay
        raw_path, decoded = self.tracker(request.raw_path)
        tracker = f"{relay.namespace}:{decoded}"
        exchange: HttpExchange | None = None
        hc_name: str | None = None
        response: web.StreamResponse | None = None
        sent = 0
        try:
            headers = request.headers
            hc = self.resolve(decoded)
            hc_name = hc.name
            route = self.route(hc, request.raw_path, decoded, list(headers.items()), headers.get,
                               request.content_length)
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if route.hc.multicast:
                reached = self.multicast(route, request.method, peer,
                                         await self._multicast_body(request, route.head_size))
                self.finished(hc_name, request.method, raw_path, 202, started, 0)
                return web.json_response({"listeners": reached}, status=202,
                                         headers={"Hyrelay-Listeners": str(reached)})
            length = request.content_length
            chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
            inline = not chunked and route.head_size + (length or 0) <= MAX_INLINE_REQUEST
            queue = ResponseQueue()
            body_task: asyncio.Task[None] | None = None
            if inline:
                exchange, _ = self.open(route, request.method, peer, queue,
                                        inline_body=await request.read() if length else b"")
            else:
                exchange, full = self.open(route, request.method, peer, queue, inline_body=None)
                body_task = asyncio.create_task(self._stream_request(request, exchange, full))
            queue.exchange = exchange
            if request.transport is not None:
                queue.abort_client = request.transport.abort
            timeout = self.timeout(route.hc)
            # One timer instead of wait_for(shield(...)): it fails the exchange, which wakes us.
            timer = (asyncio.get_running_loop().call_later(timeout, exchange.fail, no_answer_in_time())
                     if timeout else None)
            try:
                head = await queue.head
            finally:
                if timer is not None:
                    timer.cancel()
                if body_task is not None and (not queue.head.done() or queue.head.exception()):
                    body_task.cancel()
            sorted_out = response_headers(head.headers or {})
            headers_out = [*sorted_out.kept, ("Via", add_via(sorted_out.via, request.host or relay.namespace))]
            bodiless = request.method == "HEAD" or head.status in (204, 304) or head.status < 200
            whole = queue.whole_body() if head.body else b""
            if whole is not None:
                # The answer is all here (the common case on the control channel): one write, with a
                # Content-Length, instead of a chunked stream.
                response = web.Response(status=head.status, reason=reason_phrase(head.status, head.description),
                                        headers=CIMultiDict(headers_out), body=None if bodiless else whole)
                sent = 0 if bodiless else len(whole)
                await response.prepare(request)
            else:
                response = web.StreamResponse(status=head.status, reason=reason_phrase(head.status, head.description),
                                              headers=CIMultiDict(headers_out))
                await response.prepare(request)
                async for chunk in queue.body(timeout):
                    if not bodiless:
                        await response.write(chunk)
                        sent += len(chunk)
            await response.write_eof()
            self.finished(hc_name, request.method, raw_path, head.status, started, sent + exchange.bytes_in,
                          exchange.id)
            return response
        except ConnectionResetError:
            # The HTTP client hung up mid-response: ordinary, not an error of ours.
            _access.info("event=http_client_gone method=%s path=%s bytes_out=%s", request.method, raw_path, sent)
            if response is not None:
                return response  # aiohttp finishes it quietly on the closed connection
            raise asyncio.CancelledError from None  # aiohttp's quiet path for a premature disconnect
        except Exception as exc:
            err = as_relay_error(exc)
            if response is not None and response.prepared:
                # Headers are out: cut the connection so the client sees a truncated body, not a short one.
                _access.warning("event=http_response_cut method=%s path=%s bytes_out=%s tracking_id=%s "
                                "reason=%r", request.method, raw_path, sent, err.tracking_id, err.message)
                if request.transport is not None:
                    request.transport.close()
                return response
            self.finished(hc_name, request.method, raw_path, err.status, started, 0, err=err)
            return error_json(err, tracker)
        finally:
            if exchange is not None:
                self.close(exchange)

    async def _multicast_body(self, request: web.Request, head_size: int) -> bytes:
        """Read a multicast message's body; it must fit on a control channel (spec §4.3)."""
        if not request.body_exists:
            return b""
        room = MAX_INLINE_REQUEST - head_size
        if (request.content_length or 0) > room:
            raise RequestTooLarge(f"Multicast messages are limited to {room} bytes of body")
        body = await request.content.read(room + 1)
        if len(body) > room or not request.content.at_eof():
            raise RequestTooLarge(f"Multicast messages are limited to {room} bytes of body")
        return body

    async def _stream_request(self, request: web.Request, exchange: HttpExchange, full: HttpRequest) -> None:
        """Send the request over the listener's rendezvous, its body as one fragmented message."""
        limit = self.relay.config.max_request_body
        opened: asyncio.Future[RequestRendezvous] = asyncio.get_running_loop().create_future()

        def on_open(result: object) -> None:
            if not opened.done():
                if isinstance(result, RelayError):
                    opened.set_exception(result)
                else:
                    opened.set_result(result)  # type: ignore[arg-type]

        if exchange.rendezvous is not None:
            on_open(exchange.rendezvous)
        else:
            exchange.rendezvous_waiter = on_open
        try:
            rendezvous = await asyncio.wait_for(opened, self.relay.config.accept_timeout)
        except asyncio.TimeoutError:
            exchange.fail(GatewayTimeout("The listener did not open the request rendezvous in time"))
            return
        except RelayError:
            return
        # A chunked body may turn out empty: look before promising one (body:true must be followed
        # by a non-empty message for the Node listeners, spec §11.5).
        try:
            head_chunk = await request.content.read(CHUNK) if request.body_exists else b""
        except Exception as exc:  # the sender hung up before its body: release the listener
            self._sender_gone(rendezvous, exchange, f"before its request body arrived ({type(exc).__name__})")
            return
        if not head_chunk and (request.content_length or 0) > 0:
            self._sender_gone(rendezvous, exchange, "before its request body arrived")
            return
        if not rendezvous.send_text(request_message(_with_body(full, bool(head_chunk)))):
            return
        if not head_chunk:
            return
        total, first = 0, True
        try:
            async for chunk in _prepend(head_chunk, request.content.iter_chunked(CHUNK)):
                total += len(chunk)
                if limit is not None and total > limit:
                    err: RelayError = RequestTooLarge(f"The request body is larger than {limit} bytes")
                    rendezvous.close(1009, err.close_reason())
                    exchange.fail(err)
                    return
                await rendezvous.drained()
                if not rendezvous.send_binary(chunk, first=first, fin=False):
                    return
                exchange.bytes_in = total
                first = False
        except Exception as exc:  # the sender hung up or sent a broken body: release the listener
            self._sender_gone(rendezvous, exchange, f"before its whole request body arrived ({type(exc).__name__})")
            return
        if request.content_length is not None and total < request.content_length:
            self._sender_gone(rendezvous, exchange, f"after {total} of {request.content_length} body bytes")
            return
        rendezvous.send_binary(b"", first=first, fin=True)

    @staticmethod
    def _sender_gone(rendezvous: RequestRendezvous, exchange: HttpExchange, when: str) -> None:
        err = BadRequest(f"The sender stopped {when}")
        rendezvous.close(1001, err.close_reason())
        exchange.fail(err)

    def on_rendezvous(self, up, exchange: HttpExchange) -> None:
        """The listener opened a request's rendezvous (to fetch a request or to answer one)."""
        rendezvous = RequestRendezvous(exchange, self.relay.config.max_frame_size)
        if exchange.channel is not None:
            # From now on the answer comes on the rendezvous: the control channel going away (a token
            # expiry, a reconnect) must not cut it.
            exchange.channel.responses.exchanges.pop(exchange.id, None)
        if up.accept(rendezvous, None, max_frame_size=self.relay.config.max_frame_size):
            exchange.opened(rendezvous)


def fan_out(listeners: list[ControlChannel], raw_path: str, target: str, method: str,
            headers: dict[str, str], peer: tuple | None, body: bytes) -> int:
    """Deliver one message to every listener as an inline request; returns how many it reached.

    A multicast hybrid connection has no reply, so listeners' answers are drained unread.
    """
    reached = 0
    headers = {**headers, MULTICAST_HEADER: "1"}
    for channel in listeners:
        if channel.buffered > MULTICAST_MAX_BUFFER:
            continue  # this listener is not keeping up: it misses the message, nobody else waits
        address = build_address(channel.base_url, raw_path.lstrip("/"), "", action="request", id="multicast")
        message = HttpRequest(address, str(uuid.uuid4()), target, method, _endpoint(peer), headers, bool(body))
        # Text and body back to back with no await between: nothing can interleave.
        if channel.send_text(request_message(message)):
            if body:
                channel.send_binary(body, first=True, fin=True)
            reached += 1
    return reached


async def _prepend(first: bytes, rest):
    yield first
    async for chunk in rest:
        yield chunk


def _with_body(request: HttpRequest, body: bool) -> HttpRequest:
    return msgspec.structs.replace(request, body=body)


def _endpoint(peer: tuple | None) -> Endpoint | None:
    return Endpoint(str(peer[0]), int(peer[1])) if peer else None


class _Ids:
    """Request ids and rendezvous secrets, made a batch at a time from one ``urandom``.

    Per request this is one ``list.pop``, instead of a system call and a formatting of each.
    """

    __slots__ = ("_pool",)
    BATCH = 256

    def __init__(self) -> None:
        self._pool: list[tuple[str, str]] = []

    def take(self) -> tuple[str, str]:
        """A request id (a UUID4) and a rendezvous secret (128 random bits, hex)."""
        if not self._pool:
            self._pool = [self._pair(raw) for raw in _chunks(os.urandom(32 * self.BATCH), 32)]
        return self._pool.pop()

    @staticmethod
    def _pair(raw: bytes) -> tuple[str, str]:
        h = raw.hex()
        # uuid.UUID(bytes=..., version=4) spelled out, without building the object.
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}", h[32:]


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


_new_ids = _Ids().take


def no_answer_in_time() -> GatewayTimeout:
    """The 504 for a listener that did not answer within the request timeout (spec §4.9)."""
    return GatewayTimeout("The request was routed to the listener but the listener did not respond in the "
                          "required time")


def as_relay_error(exc: Exception) -> RelayError:
    """*exc* itself if it is a relay error; otherwise logged, and a 500 for the client."""
    if isinstance(exc, RelayError):
        return exc
    err = InternalError("The relay failed to relay the request")
    _log.error("event=internal_error tracking_id=%s", err.tracking_id, exc_info=exc)
    return err


@functools.lru_cache(maxsize=256)
def reason_phrase(status: int, description: str | None) -> str:
    if description:
        return safe_reason(description, 200)
    with contextlib.suppress(ValueError):
        return HTTPStatus(status).phrase
    return "Unknown"
