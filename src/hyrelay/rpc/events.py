"""Multicast events: publish to every service listening on a (multicast) hybrid connection.

An event is a JSON-RPC notification whose method is the event's name; services receive it in
their ``@rpc.event`` handler of that name. Two ways to publish:

* :func:`publish`: one HTTP POST; the relay answers 202 with the number of listeners reached.
* :class:`Publisher`: a WebSocket to the multicast hybrid connection for high rates; the relay
  acknowledges each message with the number of listeners reached, and up to ``window`` messages
  may be awaiting their acknowledgement at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from types import TracebackType
from typing import Any

import aiohttp
import msgspec

from ..client._endpoint import resolve
from ..client.connection import ConnectionClosed, HybridConnection
from ..client.sender import HybridConnectionClient
from ..client.tokens import DEFAULT_TOKEN_LIFETIME, TokenProvider, token_provider_from_connection_string
from ..protocol.errors import RelayError
from .caller import _params
from .errors import ConnectionLost, RelayUnavailable
from .wire import encode_notification

__all__ = ["publish", "Publisher"]

_log = logging.getLogger("hyrelay.rpc")


class _Ack(msgspec.Struct):
    seq: int
    listeners: int


class _Acks(msgspec.Struct):
    published: _Ack


_acks = msgspec.json.Decoder(_Acks)


def _http_url(ws_base: str, raw_path: str) -> str:
    scheme, rest = ws_base.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest}/{raw_path}"


async def publish(connection_string: str, event: str, *args: Any, entity: str | None = None,
                  token_provider: TokenProvider | None = None, session: aiohttp.ClientSession | None = None,
                  timeout: float = 30.0, **kwargs: Any) -> int:
    """Publish *event* (with positional or named params) to every listener of the hybrid connection.

    Returns:
        How many listeners the relay delivered it to (0 when none is online). On a hybrid
        connection that is not multicast, the one listener that took it counts as 1.

    Raises:
        RelayUnavailable: the relay refused (bad token, unknown hybrid connection, no listener on a
            non-multicast one) or cannot be reached.
    """
    endpoint, cs = resolve(connection_string, entity)
    provider = token_provider or (token_provider_from_connection_string(cs) if cs is not None else None)
    headers = {"Content-Type": "application/json"}
    if provider is not None:
        token, _ = await provider.get_token(endpoint.audience, DEFAULT_TOKEN_LIFETIME)
        headers["ServiceBusAuthorization"] = token
    body = encode_notification(event, _params(args, kwargs))
    url = _http_url(endpoint.ws_base, endpoint.raw_path)
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with http.post(url, data=body, headers=headers) as response:
            text = await response.read()
            if response.status != 202:
                raise RelayUnavailable(f"publishing '{event}' failed: {response.status} {response.reason}",
                                       data={"status": response.status})
            try:
                return int(msgspec.json.decode(text)["listeners"])
            except (msgspec.DecodeError, KeyError, TypeError, ValueError):
                return 1  # a listener accepted it (the hybrid connection is not multicast)
    except aiohttp.ClientError as exc:
        raise RelayUnavailable(f"cannot reach the relay to publish '{event}': {exc!r}") from exc
    finally:
        if own:
            await http.close()


class Publisher:
    """Publishes events over one WebSocket to a multicast hybrid connection.

    ::

        async with rpc.Publisher(cs, entity="prices") as pub:
            reached = await pub.publish("price_changed", symbol="X", price=1.5)   # waits for the ack
            for tick in ticks:
                await pub.send("tick", tick)      # pipelined: waits only when `window` acks are due
            await pub.drain()

    Args:
        window: messages sent but not yet acknowledged; ``send`` waits when this many are out.
    """

    def __init__(self, connection_string: str, *, entity: str | None = None,
                 token_provider: TokenProvider | None = None, window: int = 1024) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._sender = HybridConnectionClient(connection_string, entity=entity, token_provider=token_provider)
        self.window = window
        self._connection: HybridConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: collections.deque[asyncio.Future[int]] = collections.deque()
        self._room: asyncio.Semaphore | None = None
        self._error: ConnectionLost | None = None
        #: Messages acknowledged so far, and the listeners they reached in total.
        self.acknowledged = 0
        self.deliveries = 0

    async def open(self) -> Publisher:
        """Connect.

        Raises:
            RelayUnavailable: the relay refused or cannot be reached.
        """
        try:
            self._connection = await self._sender.connect()
        except RelayError as err:
            raise RelayUnavailable(f"cannot publish to '{self._sender.entity}': {err.message}",
                                   data={"status": getattr(err, "status", None)}) from err
        except (OSError, TimeoutError) as exc:
            raise RelayUnavailable(f"cannot reach the relay for '{self._sender.entity}': {exc!r}") from exc
        self._room = asyncio.Semaphore(self.window)
        self._reader = asyncio.create_task(self._read_acks(self._connection))
        return self

    async def _read_acks(self, connection: HybridConnection) -> None:
        try:
            while True:
                message = await connection.recv()
                try:
                    ack = _acks.decode(message).published
                except msgspec.DecodeError:
                    # Not a relay acknowledgement: the hybrid connection is not multicast.
                    _log.warning("event=publisher_unexpected_message hc=%s", self._sender.entity)
                    continue
                if self._pending:
                    future = self._pending.popleft()
                    if not future.done():
                        future.set_result(ack.listeners)
                    assert self._room is not None
                    self._room.release()
                self.acknowledged += 1
                self.deliveries += ack.listeners
        except ConnectionClosed as exc:
            self._fail(ConnectionLost(f"the publisher's connection closed (code {exc.code})",
                                      data={"code": exc.code, "reason": exc.reason}))

    def _fail(self, error: ConnectionLost) -> None:
        if self._error is None:
            self._error = error
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(ConnectionLost(error.message, data=error.data))
        if self._room is not None:
            for _ in range(self.window):
                self._room.release()  # wake senders so they see the error

    async def send(self, event: str, *args: Any, **kwargs: Any) -> asyncio.Future[int]:
        """Publish without waiting for the acknowledgement (only for room in the window).

        Returns:
            A future of the number of listeners reached.
        """
        if self._connection is None or self._room is None:
            raise RuntimeError("open the publisher first (async with Publisher(...) as pub:)")
        message = encode_notification(event, _params(args, kwargs)).decode()
        await self._room.acquire()
        if self._error is not None:
            raise ConnectionLost(self._error.message, data=self._error.data)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # A future nobody awaits must not warn when the connection fails.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append(future)
        try:
            await self._connection.send(message)
        except ConnectionClosed as exc:
            self._fail(ConnectionLost(f"the publisher's connection closed (code {exc.code})"))
            raise ConnectionLost(f"the publisher's connection closed (code {exc.code})") from None
        return future

    async def publish(self, event: str, *args: Any, **kwargs: Any) -> int:
        """Publish and wait for the acknowledgement; returns the number of listeners reached."""
        return await (await self.send(event, *args, **kwargs))

    async def drain(self) -> None:
        """Wait until every message sent so far is acknowledged."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        if self._error is not None:
            raise ConnectionLost(self._error.message, data=self._error.data)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close(1000, "")
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail(ConnectionLost("the publisher is closed"))

    async def __aenter__(self) -> Publisher:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
