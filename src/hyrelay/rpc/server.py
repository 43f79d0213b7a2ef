"""Putting a service online: behind a hybrid connection (WebSocket and HTTP), or on a plain WebSocket.

::

    handle = await rpc.serve(Calculator(), cs, entity="calc", listeners=2)
    ...
    await handle.close()

Each listener is an SDK :class:`~hyrelay.client.HybridConnectionListener`, so the service
reconnects by itself after a drop, and several listeners share the senders (the relay picks one
at random for each connection). Every accepted connection is one JSON-RPC session; relayed HTTP
POSTs are answered by the same dispatcher, one JSON-RPC message (or batch) per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any

from msgspec import UNSET
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve

from ..client._endpoint import is_connection_string
from ..client.connection import HybridConnection
from ..client.http import RelayedRequest, RelayedResponse
from ..client.listener import AcceptRequest, HybridConnectionListener
from ..client.tokens import TokenProvider
from ..protocol.errors import RelayError
from ..protocol.sas import parse_connection_string
from .channel import HybridChannel, WebSocketChannel
from .client import MAX_MESSAGE_SIZE
from .dispatch import Dispatcher
from .errors import INVALID_REQUEST, METHOD_NOT_FOUND, RpcError
from .outbox import SUBPROTOCOL
from .peer import Peer
from .service import Context, spec_of
from .wire import decode_batch, decode_message, encode, encode_batch, encode_error, is_batch

__all__ = ["ServiceHost", "serve", "serving", "WebSocketServer", "serve_websocket", "MAX_HTTP_BODY"]

_log = logging.getLogger("hyrelay.rpc")

#: Largest JSON-RPC HTTP request body accepted (larger ones get 413).
MAX_HTTP_BODY = 4 << 20


class ServiceHost:
    """A service online behind a hybrid connection: what :func:`serve` returns.

    Args:
        service: an instance of a class with ``@rpc.operation`` / ``@rpc.event`` methods.
        connection_string: credentials with Listen rights (and the hybrid connection as EntityPath,
            or give *entity*).
        entity: the hybrid connection's name.
        listeners: control channels to open; senders are spread over them by the relay.
        events: another hybrid connection (normally a multicast one) whose published events this
            service also receives, on one listener of its own: its name (same credentials, the
            connection string's EntityPath aside) or its own connection string.
        max_concurrency: calls each connection runs at once before it stops reading.
        max_http_body: largest HTTP request body accepted.
        listener_options: more keyword arguments for each HybridConnectionListener
            (``reconnect_min``, ``ping_interval``, ``token_renew_margin``, ...).
    """

    def __init__(self, service: Any, connection_string: str, *, entity: str | None = None, listeners: int = 1,
                 events: str | None = None, token_provider: TokenProvider | None = None,
                 max_concurrency: int = 1000, max_message_size: int | None = MAX_MESSAGE_SIZE,
                 max_http_body: int = MAX_HTTP_BODY, listener_options: dict[str, Any] | None = None) -> None:
        if listeners < 1:
            raise ValueError("listeners must be at least 1")
        self.service = service
        self.spec = spec_of(service)  # fails early on a service that cannot be described
        self.dispatcher = Dispatcher(service)
        self.max_concurrency = max_concurrency
        self.max_http_body = max_http_body
        options = dict(listener_options or {})
        options.setdefault("max_message_size", max_message_size)
        self._user_accept = options.pop("accept_handler", None)
        options["accept_handler"] = self._accept

        def listener(name: str | None) -> HybridConnectionListener:
            return HybridConnectionListener(connection_string, entity=name, token_provider=token_provider,
                                            request_handler=self._on_http, **options)

        self.listeners: list[HybridConnectionListener] = [listener(entity) for _ in range(listeners)]
        if events is not None:
            events_cs, events_entity = _events_target(connection_string, events)
            self.listeners.append(HybridConnectionListener(events_cs, entity=events_entity,
                                                           token_provider=token_provider,
                                                           request_handler=self._on_http, **options))
        self._peers: set[Peer] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> ServiceHost:
        """Open every listener (all or none).

        Raises:
            RelayError: the relay refused a listener (Unauthorized, EndpointNotFound, ...).
            OSError, TimeoutError: the relay cannot be reached.
        """
        if self._started:
            raise RuntimeError("the service is already started")
        self._started = True
        results = await asyncio.gather(*(lst.open() for lst in self.listeners), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(lst.close() for lst in self.listeners), return_exceptions=True)
            self._closed = True
            raise failure
        for lst in self.listeners:
            self._spawn(self._accept_loop(lst))
        _log.info("event=rpc_service_online service=%s hc=%s listeners=%d", self.spec.title,
                  ",".join(sorted({lst.entity for lst in self.listeners})), len(self.listeners))
        return self

    async def close(self) -> None:
        """Take the service offline: close the listeners, then every connection (1001).

        Calls in flight are cancelled; their callers get ConnectionLost.
        """
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(lst.close() for lst in self.listeners), return_exceptions=True)
        await asyncio.gather(*(p.close(1001, "The service is shutting down") for p in list(self._peers)),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        _log.info("event=rpc_service_offline service=%s", self.spec.title)

    @property
    def is_online(self) -> bool:
        """True while every listener's control channel is up."""
        return not self._closed and all(lst.is_online for lst in self.listeners)

    @property
    def connections(self) -> int:
        """Open WebSocket sessions."""
        return len(self._peers)

    async def __aenter__(self) -> ServiceHost:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- WebSocket sessions ------------------------------------------------------------------------
    async def _accept_loop(self, listener: HybridConnectionListener) -> None:
        try:
            async for connection in listener:
                if self._closed:
                    await connection.close(1001, "The service is shutting down")
                    continue
                self._spawn(self._session(connection))
        except RelayError as err:
            _log.error("event=rpc_listener_stopped hc=%s tracking_id=%s message=%r",
                       listener.entity, err.tracking_id, err.message)

    async def _accept(self, request: AcceptRequest) -> bool:
        """Speak ``hyrelay.rpc.v1`` with senders that offer it, plain JSON-RPC with the rest."""
        if self._user_accept is not None:
            verdict = self._user_accept(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                return False
        request.subprotocol = SUBPROTOCOL if SUBPROTOCOL in request.subprotocols else None
        return True

    async def _session(self, connection: HybridConnection) -> None:
        channel = HybridChannel(connection)
        peer = Peer(channel, local=self.service, max_concurrency=self.max_concurrency,
                    coalesce=channel.subprotocol == SUBPROTOCOL)
        self._peers.add(peer)
        _log.debug("event=rpc_session_opened connection=%s", connection.id)
        try:
            await peer.run()
        finally:
            self._peers.discard(peer)
            if connection.is_open:
                with contextlib.suppress(Exception):
                    await connection.close(1000, "")
            _log.debug("event=rpc_session_ended connection=%s", connection.id)

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _on_http(self, request: RelayedRequest, response: RelayedResponse) -> None:
        """JSON-RPC over relayed HTTP: POST a message or batch; GET gives the OpenRPC document."""
        if request.method == "GET":
            response.headers["Content-Type"] = "application/json"
            await response.end(encode(self.spec.openrpc()))
            return
        if request.method != "POST":
            response.status = 405
            response.headers["Allow"] = "GET, POST"
            await response.end()
            return
        try:
            body = await request.read(self.max_http_body)
        except ValueError:
            response.status = 413
            await response.end()
            return
        answer, later = await self._answer_http(body, request.headers)
        try:
            if answer is None:
                response.status = 202  # only notifications: accepted, they run below
                await response.end()
            else:
                response.headers["Content-Type"] = "application/json"
                await response.end(answer)
        finally:
            # Notifications run once the sender has its answer: a 202 means "the listener has
            # it", not "it is done". Running them here, in the request's own task, keeps them
            # within the listener's bound on concurrent requests.
            remaining = iter(later)
            try:
                for notification in remaining:
                    await notification
            finally:
                for notification in remaining:
                    notification.close()

    async def _answer_http(self, body: bytes, headers: Any = None
                           ) -> tuple[bytes | None, list[Coroutine[Any, Any, Any]]]:
        """The answer to one HTTP JSON-RPC body (None when it held only notifications), and the
        notifications still to run."""
        later: list[Coroutine[Any, Any, Any]] = []
        if is_batch(body):
            try:
                elements = decode_batch(body)
            except RpcError as err:
                return encode_error(None, err.code, err.message), later
            if not elements:
                return encode_error(None, INVALID_REQUEST, "Invalid request: an empty batch"), later
            answers = await asyncio.gather(*(self._http_one(raw, headers, later) for raw in elements))
            parts = [a for a in answers if a is not None]
            return (encode_batch(parts) if parts else None), later
        return await self._http_one(body, headers, later), later

    async def _http_one(self, raw: Any, headers: Any, later: list[Coroutine[Any, Any, Any]]) -> bytes | None:
        try:
            envelope = decode_message(raw)
        except RpcError as err:
            data = err.data
            return encode_error(data.get("id") if isinstance(data, dict) else None, err.code, err.message)
        if envelope.method is UNSET:
            return encode_error(None if envelope.id is UNSET else envelope.id, INVALID_REQUEST,
                                "Invalid request: only requests and notifications can be posted")
        try:
            if envelope.method.startswith("$/"):
                raise RpcError(f"Method not found: '{envelope.method}' needs a WebSocket connection",
                               code=METHOD_NOT_FOUND)
            op = self.dispatcher.lookup(envelope.method)
            values = op.bind(envelope.params)
        except RpcError as err:
            if envelope.id is UNSET:
                _log.info("event=notification_refused method=%s code=%d message=%r",
                          envelope.method, err.code, err.message)
                return None
            return encode_error(envelope.id, err.code, err.message, err.data)
        ctx = Context(op.name, None if envelope.id is UNSET else envelope.id, "http", None, headers) \
            if op.ctx_name else None
        if envelope.id is UNSET:
            later.append(self.dispatcher.run(op, values, UNSET, ctx))
            return None
        return await self.dispatcher.run(op, values, envelope.id, ctx)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "online" if self.is_online else "offline"
        return f"<ServiceHost {self.spec.title} {state} listeners={len(self.listeners)} connections={self.connections}>"


def _events_target(connection_string: str, events: str) -> tuple[str, str | None]:
    """Where the events listener connects: (connection string or address, entity)."""
    if is_connection_string(events):
        return events, None
    if not is_connection_string(connection_string):
        raise ValueError("with an address instead of a connection string, give events as a connection string")
    # The same credentials for another hybrid connection: drop the EntityPath that names the first.
    return str(dataclasses.replace(parse_connection_string(connection_string), entity_path=None)), events


async def serve(service: Any, connection_string: str, *, entity: str | None = None, listeners: int = 1,
                events: str | None = None, **options: Any) -> ServiceHost:
    """Put *service* online behind a hybrid connection; returns the handle (``await handle.close()``).

    See :class:`ServiceHost` for the options.

    Raises:
        TypeError: the service's operations cannot be described (bad hints, reserved names).
        RelayError, OSError, TimeoutError: a listener could not connect.
    """
    return await ServiceHost(service, connection_string, entity=entity, listeners=listeners, events=events,
                             **options).start()


@contextlib.asynccontextmanager
async def serving(service: Any, connection_string: str, *, entity: str | None = None, listeners: int = 1,
                  events: str | None = None, **options: Any) -> AsyncIterator[ServiceHost]:
    """``async with rpc.serving(svc, cs, entity="calc") as handle:``: online for the block."""
    host = await serve(service, connection_string, entity=entity, listeners=listeners, events=events, **options)
    try:
        yield host
    finally:
        await host.close()


class WebSocketServer:
    """A service on a plain WebSocket server, without the relay (for tests, benchmarks, local use)."""

    def __init__(self, service: Any, host: str = "127.0.0.1", port: int = 0, *, max_concurrency: int = 1000,
                 max_message_size: int | None = MAX_MESSAGE_SIZE) -> None:
        self.service = service
        spec_of(service)
        self.host = host
        self.port = port
        self.max_concurrency = max_concurrency
        self.max_message_size = max_message_size
        self._server: Server | None = None
        self._peers: set[Peer] = set()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    async def start(self) -> WebSocketServer:
        self._server = await ws_serve(self._session, self.host, self.port, compression=None,
                                      max_size=self.max_message_size,
                                      subprotocols=[SUBPROTOCOL])  # type: ignore[list-item]
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port
        return self

    async def _session(self, ws: ServerConnection) -> None:
        channel = WebSocketChannel(ws)
        peer = Peer(channel, local=self.service, max_concurrency=self.max_concurrency,
                    coalesce=channel.subprotocol == SUBPROTOCOL)
        self._peers.add(peer)
        try:
            await peer.run()
        finally:
            self._peers.discard(peer)

    async def close(self) -> None:
        await asyncio.gather(*(p.close(1001, "The service is shutting down") for p in list(self._peers)),
                             return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> WebSocketServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def serve_websocket(service: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> WebSocketServer:
    """Serve *service* on ``ws://host:port/`` directly; connect with :func:`hyrelay.rpc.connect_websocket`."""
    return await WebSocketServer(service, host, port, **options).start()
