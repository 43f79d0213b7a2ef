"""The listener: a control channel to the relay, and rendezvous sockets for each sender (spec §2).

``async with listener:`` connects; ``async for connection in listener:`` hands out accepted
connections, and relayed HTTP requests go to ``request_handler`` (spec §4, see :mod:`.http`).
After a drop the listener reconnects by itself, with jittered exponential backoff, until ``close()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import CoroutineType, TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as _WsClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus

from .. import __version__
from ..protocol.addresses import build_address, filter_query, parse_hc_target, reject_address
from ..protocol.errors import EndpointNotFound, ProtocolViolation, RelayError
from ..protocol.messages import (MAX_CONTROL_MESSAGE, Accept, HttpRequest, decode_request, parse_relay_message,
                                 parse_request, renew_token_message)
from ._endpoint import Endpoint, resolve
from ._errors import error_from_handshake
from .connection import MAX_FRAGMENT_SIZE, Headers, HybridConnection
from .control import ControlSocket, open_control
from .http import DEFAULT_FLUSH_INTERVAL, MAX_INLINE_BODY, RequestDispatcher, RequestHandler, TooLarge
from .tokens import DEFAULT_TOKEN_LIFETIME, TokenProvider, token_provider_from_connection_string

__all__ = ["HybridConnectionListener", "AcceptRequest", "ListenerEvent", "EventName"]

_log = logging.getLogger("hyrelay.client")

EventName = Literal["connecting", "online", "offline"]
_EVENTS = ("connecting", "online", "offline")
_USER_AGENT = f"hyrelay-python/{__version__}"
#: .NET gives its rendezvous 20 s; the relay keeps an accept address alive for 30 s (spec §2.5.1).
RENDEZVOUS_TIMEOUT = 20.0
CONTROL_OPEN_TIMEOUT = 30.0
#: A renewal that fails is retried this soon (or sooner, if the token runs out first).
RENEW_RETRY = 5.0
_HANDLER_FAILED = "The Listener's custom AcceptHandler threw an exception. See Listener logs for details."
_CLOSED = object()


@dataclass(frozen=True, slots=True)
class ListenerEvent:
    """What ``on(...)`` callbacks receive."""

    name: EventName
    #: Why the listener went offline or failed to connect (None for a clean close).
    error: BaseException | None = None
    #: Close code and reason of a dropped control channel.
    close_code: int | None = None
    close_reason: str | None = None
    #: Reconnect attempt number (0 on the first connect).
    attempt: int = 0


class AcceptRequest:
    """A sender waiting to be accepted; what ``accept_handler`` decides on (spec §2.3)."""

    def __init__(self, accept: Accept, endpoint: Endpoint) -> None:
        self.address = accept.address
        self.id = accept.id
        self.headers = Headers(accept.connect_headers)
        self.remote_endpoint: tuple[str, int] | None = (
            (accept.remote_address, accept.remote_port or 0) if accept.remote_address else None)
        parts = urlsplit(accept.address)
        target = parse_hc_target(f"{parts.path}?{parts.query}")
        raw_suffix = target.raw_suffix(endpoint.segments) if target is not None else ""
        #: Path after the hybrid connection's name, decoded, with its leading ``/`` ("" if none).
        self.path_suffix = unquote(raw_suffix)
        #: The sender's query string, raw, with every ``sb-hc-*`` parameter removed.
        self.query = filter_query(target.query) if target is not None else ""
        offered = self.headers.get("Sec-WebSocket-Protocol", "")
        self.subprotocols: list[str] = [p.strip() for p in offered.split(",") if p.strip()]
        #: The subprotocol to accept with; the first one offered unless the handler changes it.
        self.subprotocol: str | None = self.subprotocols[0] if self.subprotocols else None
        self._reject: tuple[int, str] | None = None

    @property
    def query_params(self) -> dict[str, str]:
        """``query`` decoded into a dict (the last of repeated names wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def reject(self, status: int, description: str) -> None:
        """Refuse the sender: its upgrade fails with *status* and *description*."""
        if not 400 <= status <= 599:
            raise ValueError("a reject status must be a 4xx or 5xx code")
        self._reject = (int(status), description)

    @property
    def rejected(self) -> tuple[int, str] | None:
        return self._reject

    def __repr__(self) -> str:
        return f"<AcceptRequest id={self.id} suffix={self.path_suffix!r} query={self.query!r}>"


AcceptHandler = Callable[[AcceptRequest], "bool | Awaitable[bool]"]
EventCallback = Callable[[ListenerEvent], "Any"]


class HybridConnectionListener:
    """Listens on one hybrid connection and yields the connections senders open to it.

    Args:
        address_or_connection_string: ``ws://host:port/$hc/name`` (``wss://``, ``sb://ns/name``) or a
            connection string (``Endpoint=...;SharedAccessKeyName=...;SharedAccessKey=...``).
        entity: the hybrid connection's name, when the address or connection string lacks it.
        token_provider: where tokens come from; by default the connection string's credentials.
        accept_handler: decides on each sender (see ``AcceptRequest``); returning False rejects with
            400 "Rejected by user code". Without one, every sender is accepted.
        listener_id: sent as ``sb-hc-id``; senders can target it with Microsoft-Relay-AllowedListeners.
        ping_interval: seconds between keep-alive pings on the control channel (None disables).
        reconnect_min, reconnect_max: backoff bounds, in seconds, for reconnecting.
        token_renew_margin: seconds before the token's expiry that a new one is sent (``renewToken``).
        stop_on_not_found: stop reconnecting when the relay answers 404 (the hybrid connection was
            deleted), as the .NET SDK does. By default the listener keeps trying.
        backlog: accepted connections waiting for ``async for``; when full, a sender waits up to
            *backlog_timeout* seconds for room, then gets 503.
        max_pending_accepts: accepts in progress at once; beyond it senders get 503 at once.
        max_message_size: bound for ``recv()`` of whole messages on accepted connections (None: none).
        request_handler: ``async (RelayedRequest, RelayedResponse) -> None``, called for each relayed
            HTTP request in its own task. Without one, requests are answered 501; a handler that
            raises gives 500 (see :mod:`hyrelay.client.http`). It may also be set later as an attribute.
        response_flush_interval: seconds after its first write that a response still buffered (at most
            64 KiB) leaves over a rendezvous instead of waiting for ``end()``, as .NET does (None: never).
        max_concurrent_requests: requests handled at once; beyond it requests get 503.
    """

    def __init__(
        self,
        address_or_connection_string: str,
        *,
        entity: str | None = None,
        token_provider: TokenProvider | None = None,
        accept_handler: AcceptHandler | None = None,
        listener_id: str | None = None,
        ping_interval: float | None = 30.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        token_renew_margin: float = 300,
        stop_on_not_found: bool = False,
        backlog: int = 64,
        backlog_timeout: float = 10.0,
        max_pending_accepts: int = 256,
        max_message_size: int | None = None,
        request_handler: RequestHandler | None = None,
        response_flush_interval: float | None = DEFAULT_FLUSH_INTERVAL,
        max_concurrent_requests: int = 1000,
    ) -> None:
        self.endpoint, cs = resolve(address_or_connection_string, entity)
        if token_provider is None and cs is not None:
            token_provider = token_provider_from_connection_string(cs)
        if reconnect_min <= 0 or reconnect_max < reconnect_min:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if backlog < 1 or max_pending_accepts < 1 or max_concurrent_requests < 1:
            raise ValueError("backlog, max_pending_accepts and max_concurrent_requests must be at least 1")
        if response_flush_interval is not None and response_flush_interval < 0:
            raise ValueError("response_flush_interval must not be negative")
        self.token_provider = token_provider
        self.accept_handler = accept_handler
        self.request_handler = request_handler
        self.listener_id = listener_id or str(uuid.uuid4())
        self.ping_interval = ping_interval
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.token_renew_margin = token_renew_margin
        self.stop_on_not_found = stop_on_not_found
        self.max_pending_accepts = max_pending_accepts
        self.backlog_timeout = backlog_timeout
        self._max_size = (max_message_size, MAX_FRAGMENT_SIZE)
        self._callbacks: dict[str, list[EventCallback]] = {name: [] for name in _EVENTS}
        self._backlog = backlog
        self._slots: asyncio.Semaphore | None = None
        # Bounded by _slots, not by maxsize: put_nowait only ever happens with a slot held.
        self._queue: asyncio.Queue[Any] | None = None
        self._ws: ControlSocket | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepts = 0
        self._online = False
        self._opened = False
        self._closing = False
        self._closed: asyncio.Event | None = None
        self.error: RelayError | None = None
        self._http = RequestDispatcher(
            handler=lambda: self.request_handler, entity=self.endpoint.entity, ws_base=self.endpoint.ws_base,
            connect=self._open_request_rendezvous, flush_interval=response_flush_interval,
            max_concurrent=max_concurrent_requests, listener_id=self.listener_id)

    @classmethod
    def from_connection_string(cls, connection_string: str, *, entity: str | None = None,
                               **kwargs: Any) -> "HybridConnectionListener":
        """A listener for the connection string's EntityPath (or *entity*) with its credentials."""
        return cls(connection_string, entity=entity, **kwargs)

    # -- public state and events ----------------------------------------------------------------
    @property
    def is_online(self) -> bool:
        """True while the control channel is up."""
        return self._online

    @property
    def opened(self) -> bool:
        """True once ``open()`` has been called (the listener may since have closed)."""
        return self._opened

    @property
    def entity(self) -> str:
        return self.endpoint.entity

    def on(self, event: EventName, callback: EventCallback) -> Callable[[], None]:
        """Call *callback(ListenerEvent)* on *event*; returns a function that unsubscribes.

        Events: ``connecting`` (an attempt starts), ``online`` (the control channel is up),
        ``offline`` (it dropped, or the listener closed). A coroutine callback runs as a task.
        """
        if event not in self._callbacks:
            raise ValueError(f"unknown event {event!r}; use one of {', '.join(_EVENTS)}")
        callbacks = self._callbacks[event]
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)
        return unsubscribe

    def _emit(self, event: ListenerEvent) -> None:
        for callback in list(self._callbacks[event.name]):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                _log.exception("event=callback_failed listener=%s on=%s", self.listener_id, event.name)

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        # A coroutine (every request's) goes straight to the loop: ensure_future costs three calls more.
        task = (asyncio.get_running_loop().create_task(awaitable) if type(awaitable) is CoroutineType
                else asyncio.ensure_future(awaitable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect the control channel.

        Raises:
            RelayError: the relay refused (Unauthorized, Forbidden, EndpointNotFound, ...).
            OSError, TimeoutError: the relay cannot be reached.
        """
        if self._opened:
            raise RuntimeError("the listener is already open (a closed listener cannot be reopened)")
        self._opened = True
        self._closed = asyncio.Event()
        self._slots = asyncio.Semaphore(self._backlog)
        self._queue = asyncio.Queue()
        self._emit(ListenerEvent("connecting"))
        try:
            ws, token, expires_at = await self._connect_control()
        except BaseException as exc:
            self._closing = True
            _log.warning("event=listener_open_failed hc=%s listener=%s error=%r",
                         self.entity, self.listener_id, exc)
            self._queue.put_nowait(_CLOSED)
            self._closed.set()
            raise
        self._went_online(ws)
        self._runner = asyncio.create_task(self._run(ws, token, expires_at),
                                           name=f"hyrelay-listener-{self.listener_id}")

    async def close(self) -> None:
        """Stop reconnecting, close the control channel with 1000 and end ``async for``.

        Connections already handed out stay open; ones not yet taken from the backlog are closed.
        """
        if self._closing and self._runner is None:
            return
        self._opened = self._closing = True
        # Stop the runner first, so it cannot bring a new control channel online behind our back.
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close(1000, "Normal Closure")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._online:
            self._online = False
            self._emit(ListenerEvent("offline", close_code=1000, close_reason="Normal Closure"))
        await asyncio.gather(*(c.close(1001, "The listener closed") for c in self._finish()),
                             return_exceptions=True)
        if self._closed is not None:
            self._closed.set()
        _log.info("event=listener_closed hc=%s listener=%s", self.entity, self.listener_id)

    async def wait_closed(self) -> None:
        """Return once the listener has closed (``close()``, or it stopped for good).

        Raises:
            RelayError: the listener stopped for good (``stop_on_not_found`` and a 404).
        """
        if self._closed is None:
            raise RuntimeError("open the listener first (async with listener: ...)")
        await self._closed.wait()
        if self.error is not None:
            raise self.error

    def _finish(self) -> list[HybridConnection]:
        """End iteration; returns the connections nobody took, for the caller to close."""
        queue = self._queue
        left: list[HybridConnection] = []
        if queue is None:
            return left
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, HybridConnection):
                left.append(item)
        queue.put_nowait(_CLOSED)
        return left

    async def __aenter__(self) -> "HybridConnectionListener":
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- handing out connections ----------------------------------------------------------------
    def __aiter__(self) -> "HybridConnectionListener":
        return self

    async def __anext__(self) -> HybridConnection:
        connection = await self.accept()
        if connection is None:
            raise StopAsyncIteration
        return connection

    async def accept(self) -> HybridConnection | None:
        """The next accepted connection; None once the listener is closed.

        Raises:
            RelayError: the listener stopped for good (``stop_on_not_found`` and a 404).
        """
        if self._queue is None or self._slots is None:
            raise RuntimeError("open the listener first (async with listener: ...)")
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # every other waiter ends too
            if self.error is not None:
                raise self.error
            return None
        self._slots.release()
        return item

    # -- control channel ------------------------------------------------------------------------
    async def _token(self) -> tuple[str | None, int]:
        if self.token_provider is None:
            return None, 0
        return await self.token_provider.get_token(self.endpoint.audience, DEFAULT_TOKEN_LIFETIME)

    async def _connect_control(self) -> tuple[ControlSocket, str | None, int]:
        token, expires_at = await self._token()
        url = build_address(self.endpoint.ws_base, self.endpoint.raw_path, self.endpoint.query,
                            action="listen", id=self.listener_id)
        headers = {"User-Agent": _USER_AGENT}
        if token:
            headers["ServiceBusAuthorization"] = token
        ws = await open_control(url, headers, text_limit=MAX_CONTROL_MESSAGE, binary_limit=MAX_INLINE_BODY,
                                ping_interval=self.ping_interval, timeout=CONTROL_OPEN_TIMEOUT,
                                max_frame_size=MAX_FRAGMENT_SIZE)
        return ws, token, expires_at

    def _went_online(self, ws: ControlSocket) -> None:
        self._ws = ws
        self._online = True
        _log.info("event=listener_online hc=%s listener=%s", self.entity, self.listener_id)
        self._emit(ListenerEvent("online"))

    async def _run(self, ws: ControlSocket, token: str | None, expires_at: int) -> None:
        """Serve the channel; when it drops, reconnect until closed."""
        while True:
            error = await self._serve(ws, token, expires_at)
            self._online = False
            self._ws = None
            if self._closing:
                return
            code, reason = ws.close_code, ws.close_reason
            _log.warning("event=listener_offline hc=%s listener=%s code=%s reason=%r error=%s",
                         self.entity, self.listener_id, code, reason,
                         "-" if error is None or isinstance(error, _WsClosed) else repr(error))
            self._emit(ListenerEvent("offline", error=error, close_code=code, close_reason=reason))
            reconnected = await self._reconnect()
            if reconnected is None:
                return
            ws, token, expires_at = reconnected
            self._went_online(ws)

    def _backoff(self, attempt: int) -> float:
        # Equal jitter: never zero, so a fleet of listeners does not reconnect in lockstep.
        ceiling = min(self.reconnect_max, self.reconnect_min * (2 ** min(attempt, 30)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _reconnect(self) -> tuple[ControlSocket, str | None, int] | None:
        attempt = 0
        while not self._closing:
            delay = self._backoff(attempt)
            attempt += 1
            _log.info("event=listener_reconnect_wait hc=%s listener=%s attempt=%d delay=%.2f",
                      self.entity, self.listener_id, attempt, delay)
            await asyncio.sleep(delay)
            self._emit(ListenerEvent("connecting", attempt=attempt))
            try:
                return await self._connect_control()
            except EndpointNotFound as err:
                if self.stop_on_not_found:
                    _log.error("event=listener_stopped hc=%s listener=%s reason=endpoint_not_found "
                               "tracking_id=%s message=%r", self.entity, self.listener_id,
                               err.tracking_id, err.message)
                    self.error = err
                    self._closing = True
                    for connection in self._finish():
                        self._spawn(connection.close(1001, "The listener stopped"))
                    if self._closed is not None:
                        self._closed.set()
                    return None
                _log.warning("event=listener_reconnect_failed hc=%s listener=%s status=404 attempt=%d "
                             "tracking_id=%s message=%r note=hybrid_connection_deleted_or_renamed?",
                             self.entity, self.listener_id, attempt, err.tracking_id, err.message)
            except RelayError as err:
                _log.warning("event=listener_reconnect_failed hc=%s listener=%s status=%s attempt=%d "
                             "tracking_id=%s message=%r", self.entity, self.listener_id, err.status,
                             attempt, err.tracking_id, err.message)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                _log.warning("event=listener_reconnect_failed hc=%s listener=%s attempt=%d error=%r",
                             self.entity, self.listener_id, attempt, exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A token provider or a bug should not end a listener that reconnects forever.
                _log.exception("event=listener_reconnect_failed hc=%s listener=%s attempt=%d",
                               self.entity, self.listener_id, attempt)
        return None

    async def _serve(self, ws: ControlSocket, token: str | None, expires_at: int) -> BaseException | None:
        """Read control messages until the channel closes; returns what ended it."""
        link = ws
        renewer = asyncio.create_task(self._renew_loop(link, token, expires_at))
        try:
            while True:
                message = await self._read_control(ws)
                if message is not None:
                    await self._on_control(link, message)
        except _WsClosed as exc:
            return None if exc.rcvd is not None and exc.rcvd.code == 1000 else exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("event=control_channel_failed hc=%s listener=%s", self.entity, self.listener_id)
            await ws.close(1011, "Listener error")
            return exc
        finally:
            renewer.cancel()

    async def _read_control(self, ws: ControlSocket) -> str | None:
        """One control command; binary messages outside a request and oversized ones are skipped."""
        message = await ws.recv(0)
        if isinstance(message, str):
            return message
        if isinstance(message, TooLarge) and message.text:
            _log.warning("event=control_message_too_large listener=%s size=%d", self.listener_id, message.size)
        else:
            _log.debug("event=control_binary_ignored listener=%s", self.listener_id)
        return None

    async def _on_control(self, link: ControlSocket, text: str) -> None:
        request = decode_request(text)
        if request is not None:
            await self._on_request(link, request)
            return
        try:
            message = parse_relay_message(text)
        except ProtocolViolation as err:
            _log.warning("event=control_message_invalid listener=%s message=%r", self.listener_id, err.message)
            return
        if isinstance(message, Accept):
            if self._accepts >= 2 * self.max_pending_accepts:
                # Not even a reject fits; the relay answers the sender 504 when the address expires.
                _log.warning("event=accept_dropped listener=%s connection=%s reason=too_many_pending",
                             self.listener_id, message.id)
                return
            if self._accepts >= self.max_pending_accepts:
                _log.warning("event=accept_refused listener=%s connection=%s reason=too_many_pending",
                             self.listener_id, message.id)
                work = self._send_reject(message.address, message.id, 503,
                                         "The listener has too many connections pending")
            else:
                work = self._on_accept(message)
            self._accepts += 1
            self._spawn(work).add_done_callback(self._accept_done)
        elif message.name == "request":
            try:
                request = parse_request(message.body)
            except ProtocolViolation as err:
                _log.warning("event=request_invalid listener=%s message=%r", self.listener_id, err.message)
                return
            await self._on_request(link, request)
        else:
            # Unknown commands are ignored, as .NET does.
            _log.debug("event=control_ignored listener=%s command=%s", self.listener_id, message.name)

    async def _on_request(self, link: ControlSocket, request: HttpRequest) -> None:
        """A relayed HTTP request: read its inline body here (it follows at once), handle it in a task."""
        if request.is_stub:
            self._spawn(self._http.serve_rendezvous(request))
            return
        data = b""
        problem: tuple[int, str] | None = None
        follow: str | None = None
        if request.body:
            message = await link.recv(MAX_INLINE_BODY)
            if isinstance(message, str):
                # .NET calls this a protocol violation; answer the request and still obey the command.
                _log.warning("event=request_body_missing listener=%s request=%s", self.listener_id, request.id)
                problem, follow = (400, "The relay sent no body for the request"), message
            elif isinstance(message, TooLarge):
                problem = (413, "The request body is too large for the control channel")
            else:
                data = message
        self._spawn(self._http.serve_inline(link, request, data, problem))
        if follow is not None:
            await self._on_control(link, follow)

    def _accept_done(self, _task: asyncio.Task[Any]) -> None:
        self._accepts -= 1

    # -- token renewal --------------------------------------------------------------------------
    def _renew_delay(self, expires_at: int) -> float:
        remaining = expires_at - time.time()
        # Renew token_renew_margin before expiry; a token shorter than twice the margin at half-life.
        return max(0.0, remaining - self.token_renew_margin, remaining / 2)

    async def _renew_loop(self, link: ControlSocket, current: str | None, expires_at: int) -> None:
        if self.token_provider is None or current is None or expires_at <= 0:
            return
        while True:
            await asyncio.sleep(self._renew_delay(expires_at))
            try:
                token, new_expiry = await self._token()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("event=token_renew_failed hc=%s listener=%s", self.entity, self.listener_id)
                await asyncio.sleep(min(RENEW_RETRY, max(0.5, (expires_at - time.time()) / 2)))
                continue
            if token is None or token == current:
                # A fixed token cannot be renewed; the relay will drop the channel and we reconnect.
                _log.info("event=token_not_renewable hc=%s listener=%s expires_at=%d",
                          self.entity, self.listener_id, expires_at)
                return
            try:
                await link.send(renew_token_message(token))
            except _WsClosed:
                return
            _log.info("event=token_renewed hc=%s listener=%s expires_at=%d",
                      self.entity, self.listener_id, new_expiry)
            if new_expiry <= expires_at:
                # Nothing fresher came back; pace the retries instead of spinning.
                await asyncio.sleep(RENEW_RETRY)
            current, expires_at = token, max(expires_at, new_expiry)

    # -- accepting and rejecting ----------------------------------------------------------------
    async def _on_accept(self, accept: Accept) -> None:
        assert self._slots is not None and self._queue is not None
        request = AcceptRequest(accept, self.endpoint)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.backlog_timeout)
        except TimeoutError:
            _log.warning("event=accept_refused listener=%s connection=%s reason=backlog_full",
                         self.listener_id, request.id)
            await self._send_reject(request.address, request.id, 503, "The listener's backlog is full")
            return
        handed_over = False
        try:
            if not await self._decide(request):
                status, description = request.rejected or (400, "Rejected by user code")
                await self._send_reject(request.address, request.id, status, description)
                return
            connection = await self._rendezvous(request)
            if connection is None:
                return
            if self._closing:
                await connection.close(1001, "The listener closed")
                return
            self._queue.put_nowait(connection)
            handed_over = True
        finally:
            if not handed_over:
                self._slots.release()

    async def _decide(self, request: AcceptRequest) -> bool:
        if self.accept_handler is None:
            return True
        try:
            result = self.accept_handler(request)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("event=accept_handler_failed listener=%s connection=%s", self.listener_id, request.id)
            request.reject(502, _HANDLER_FAILED)
            return False
        return bool(result) and request.rejected is None

    async def _rendezvous(self, request: AcceptRequest) -> HybridConnection | None:
        """Open the rendezvous socket the sender is waiting on (spec §2.5.1)."""
        try:
            ws = await connect(
                request.address, subprotocols=[request.subprotocol] if request.subprotocol else None,  # type: ignore[list-item]
                compression=None, max_size=self._max_size, open_timeout=RENDEZVOUS_TIMEOUT,
                user_agent_header=_USER_AGENT)
        except InvalidHandshake as exc:
            err = error_from_handshake(exc)
            _log.warning("event=accept_failed listener=%s connection=%s status=%s tracking_id=%s message=%r",
                         self.listener_id, request.id, err.status, err.tracking_id, err.message)
            return None
        except (OSError, TimeoutError) as exc:
            _log.warning("event=accept_failed listener=%s connection=%s error=%r",
                         self.listener_id, request.id, exc)
            return None
        _log.debug("event=accepted listener=%s connection=%s subprotocol=%s",
                   self.listener_id, request.id, request.subprotocol or "-")
        return HybridConnection(ws, role="listener", id=request.id, path_suffix=request.path_suffix,
                                query=request.query, headers=request.headers,
                                remote_endpoint=request.remote_endpoint)

    async def _open_request_rendezvous(self, address: str) -> ClientConnection:
        """A request rendezvous (spec §4.5, §4.7): the address as given, no token, no compression."""
        return await connect(address, compression=None, max_size=(None, MAX_FRAGMENT_SIZE),
                             open_timeout=RENDEZVOUS_TIMEOUT, user_agent_header=_USER_AGENT)

    async def _send_reject(self, address: str, connection_id: str, status: int, description: str) -> None:
        """Reject through the rendezvous address; the relay confirms with 410 Gone (spec §2.5.2)."""
        try:
            ws = await connect(reject_address(address, status, description), compression=None,
                               open_timeout=RENDEZVOUS_TIMEOUT, user_agent_header=_USER_AGENT)
        except InvalidStatus as exc:
            if exc.response.status_code == 410:
                _log.info("event=connection_rejected listener=%s connection=%s status=%d",
                          self.listener_id, connection_id, status)
                return
            err = error_from_handshake(exc)
            _log.warning("event=reject_failed listener=%s connection=%s status=%s tracking_id=%s message=%r",
                         self.listener_id, connection_id, err.status, err.tracking_id, err.message)
            return
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            _log.warning("event=reject_failed listener=%s connection=%s error=%r",
                         self.listener_id, connection_id, exc)
            return
        # A relay that accepts a reject address as a connection does not follow the protocol.
        _log.warning("event=reject_failed listener=%s connection=%s reason=upgrade_accepted",
                     self.listener_id, connection_id)
        await ws.close(1000, "Rejected")
