"""Clients: a JSON-RPC session with a service behind a hybrid connection (or on a plain WebSocket).

::

    async with rpc.connect(cs, Calculator) as calc:      # typed: signatures from the class
        print(await calc.add(1, 2))

    async with rpc.connect(cs) as client:               # untyped
        print(await client.call("add", 1, 2, timeout=0.5))
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidHandshake

from ..client.sender import HybridConnectionClient
from ..client.tokens import TokenProvider
from ..protocol.errors import RelayError
from .caller import DEFAULT_WINDOW, Caller, ServiceProxy, proxy_class
from .channel import Channel, HybridChannel, WebSocketChannel
from .errors import ConnectionLost, RelayUnavailable, RemoteError
from .outbox import SUBPROTOCOL
from .peer import Peer

__all__ = ["Client", "connect", "connect_websocket", "MAX_MESSAGE_SIZE"]

T = TypeVar("T")
C = TypeVar("C")

#: Largest JSON-RPC message accepted (one message, or one batch).
MAX_MESSAGE_SIZE = 16 << 20

Opener = Callable[[], Awaitable[Channel]]


class Client(Caller):
    """A JSON-RPC session with one service, reopened on the next call after the connection drops.

    Calls in flight when the connection drops fail with ConnectionLost (they may or may not have
    run); the next call opens a new connection unless ``reconnect`` is False.

    Args:
        opener: opens a channel (see :func:`connect` and :func:`connect_websocket`).
        deadline: default seconds each call may take (None: no limit).
        callbacks: an object whose ``@rpc.operation`` methods the service may call back.
        reconnect: open a new connection for calls made after a drop.
        max_concurrency: callbacks run at once.
    """

    def __init__(self, opener: Opener, *, deadline: float | None = None, callbacks: Any = None,
                 reconnect: bool = True, max_concurrency: int = 1000, description: str = "") -> None:
        self._opener = opener
        self.default_timeout = deadline
        self.callbacks = callbacks
        self.reconnect = reconnect
        self.max_concurrency = max_concurrency
        self.description = description
        self._current: Peer | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._current is not None and self._current.is_open

    @property
    def peer(self) -> Peer | None:
        """The current session (None before the first connection)."""
        return self._current

    async def open(self) -> Client:
        """Connect now (calls would connect on first use otherwise).

        Raises:
            RelayUnavailable: the relay refused (no listener online, bad token, ...) or is unreachable.
        """
        await self._peer()
        return self

    def ready_peer(self) -> Peer | None:
        peer = self._current
        return peer if peer is not None and peer.is_open else None

    async def _peer(self) -> Peer:
        try:
            return await self._acquire()
        except RemoteError as exc:
            exc.from_call = True
            raise

    async def _acquire(self) -> Peer:
        peer = self._current
        if peer is not None and peer.is_open:
            return peer
        if self._closed:
            raise ConnectionLost("the client is closed")
        if peer is not None and not self.reconnect:
            raise ConnectionLost(peer.error.message if peer.error else "the connection is closed")
        async with self._lock:
            peer = self._current
            if peer is not None and peer.is_open:
                return peer
            channel = await self._opener()
            self._current = Peer(channel, local=self.callbacks, max_concurrency=self.max_concurrency,
                                 coalesce=channel.subprotocol == SUBPROTOCOL).start()
            return self._current

    async def close(self) -> None:
        """Close the connection; calls in flight fail with ConnectionLost."""
        self._closed = True
        peer, self._current = self._current, None
        if peer is not None:
            await peer.close(1000, "Normal Closure")

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "idle"
        return f"<rpc.Client {self.description} {state}>"


class Connection(Generic[C]):
    """What :func:`connect` returns: ``async with`` it, or ``await`` it (then close the client yourself)."""

    def __init__(self, client: Client, view: C) -> None:
        self.client = client
        self.view = view

    async def _open(self) -> C:
        await self.client.open()
        return self.view

    def __await__(self) -> Generator[Any, None, C]:
        return self._open().__await__()

    async def __aenter__(self) -> C:
        return await self._open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.client.close()


def _relay_opener(connection_string: str, entity: str | None, token_provider: TokenProvider | None,
                  max_message_size: int | None, open_timeout: float,
                  headers: Mapping[str, str] | None, coalesce: bool) -> tuple[Opener, str]:
    sender = HybridConnectionClient(connection_string, entity=entity, token_provider=token_provider,
                                    max_message_size=max_message_size)

    async def opener() -> Channel:
        try:
            connection = await sender.connect(headers=headers, open_timeout=open_timeout,
                                              subprotocols=[SUBPROTOCOL] if coalesce else None)
        except RelayError as err:
            raise RelayUnavailable(f"cannot reach '{sender.entity}': {err.message}",
                                   data={"status": getattr(err, "status", None), "trackingId": err.tracking_id}
                                   ) from err
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise RelayUnavailable(f"cannot reach the relay for '{sender.entity}': {exc!r}") from exc
        return HybridChannel(connection)

    return opener, str(sender.endpoint)


@overload
def connect(connection_string: str, service: None = None, *, entity: str | None = ...,
            deadline: float | None = ..., callbacks: Any = ..., window: int = ..., reconnect: bool = ...,
            token_provider: TokenProvider | None = ..., headers: Mapping[str, str] | None = ...,
            max_message_size: int | None = ..., open_timeout: float = ..., coalesce: bool = ...
            ) -> Connection[Client]: ...
@overload
def connect(connection_string: str, service: type[T], *, entity: str | None = ...,
            deadline: float | None = ..., callbacks: Any = ..., window: int = ..., reconnect: bool = ...,
            token_provider: TokenProvider | None = ..., headers: Mapping[str, str] | None = ...,
            max_message_size: int | None = ..., open_timeout: float = ..., coalesce: bool = ...
            ) -> Connection[T]: ...


def connect(connection_string: str, service: type[Any] | None = None, *, entity: str | None = None,
            deadline: float | None = None, callbacks: Any = None, window: int = DEFAULT_WINDOW,
            reconnect: bool = True, token_provider: TokenProvider | None = None,
            headers: Mapping[str, str] | None = None, max_message_size: int | None = MAX_MESSAGE_SIZE,
            open_timeout: float = 30.0, coalesce: bool = True) -> Connection[Any]:
    """Connect to the service listening on a hybrid connection.

    Args:
        connection_string: ``Endpoint=...;SharedAccessKeyName=...;SharedAccessKey=...[;EntityPath=hc]``
            (or a ``ws://host/$hc/name`` address).
        service: the service class: gives a typed proxy whose methods have its signatures.
            Without it you get the untyped :class:`Client` (``call``, ``notify``, ``stream``, ``batch``).
        entity: the hybrid connection, when the connection string has no EntityPath.
        deadline: default seconds per call (a call's own ``timeout=`` wins).
        callbacks: an object whose ``@rpc.operation`` methods the service may call (``ctx.client``).
        window: stream items the service may send ahead of what you have read (typed proxies).
        reconnect: open a new connection for calls made after the connection dropped.
        headers: extra HTTP headers for the upgrade; the service sees them as ``ctx.headers``.
        coalesce: offer the ``hyrelay.rpc.v1`` subprotocol, so that messages written together
            travel together (see :mod:`hyrelay.rpc.outbox`); False speaks plain JSON-RPC only.

    Raises (on entering):
        RelayUnavailable: no listener online, a refused token, or the relay is unreachable.
    """
    opener, where = _relay_opener(connection_string, entity, token_provider, max_message_size, open_timeout, headers,
                                  coalesce)
    client = Client(opener, deadline=deadline, callbacks=callbacks, reconnect=reconnect, description=where)
    view: Any = client if service is None else proxy_class(service)(client, window=window)
    return Connection(client, view)


def connect_websocket(url: str, service: type[Any] | None = None, *, deadline: float | None = None,
                      callbacks: Any = None, window: int = DEFAULT_WINDOW, reconnect: bool = True,
                      max_message_size: int | None = MAX_MESSAGE_SIZE, open_timeout: float = 30.0,
                      coalesce: bool = True) -> Connection[Any]:
    """Connect to a service served directly on a WebSocket (:func:`hyrelay.rpc.serve_websocket`), no relay."""

    async def opener() -> Channel:
        try:
            ws = await ws_connect(url, compression=None, max_size=max_message_size, open_timeout=open_timeout,
                                  subprotocols=[SUBPROTOCOL] if coalesce else None)  # type: ignore[list-item]
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise RelayUnavailable(f"cannot reach {url}: {exc!r}") from exc
        return WebSocketChannel(ws)

    client = Client(opener, deadline=deadline, callbacks=callbacks, reconnect=reconnect, description=url)
    view: Any = client if service is None else proxy_class(service)(client, window=window)
    return Connection(client, view)


def client_of(view: Client | ServiceProxy) -> Client:
    """The Client behind a typed proxy (or the client itself), e.g. to close it."""
    if isinstance(view, ServiceProxy):
        caller = view.rpc_caller
        if not isinstance(caller, Client):
            raise TypeError("this proxy does not belong to a Client")
        return caller
    return view
