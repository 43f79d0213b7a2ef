"""A blocking client for scripts: the asyncio client on an event loop in a background thread.

::

    with rpc.SyncClient(cs, entity="calc") as calc:
        print(calc.call("add", 1, 2))

    with rpc.SyncClient(cs, Calculator) as calc:   # typed: calc.add(1, 2)
        print(calc.add(1, 2))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from .caller import _DEFAULT, DEFAULT_WINDOW, ServiceProxy, proxy_class
from .client import Client, connect

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """Blocking calls to a service behind a hybrid connection.

    Args:
        connection_string, entity, deadline, callbacks, ...: as for :func:`hyrelay.rpc.connect`.
        service: the service class, for typed methods (``client.add(1, 2)``).

    Raises (on creation):
        RelayUnavailable: the relay refused or cannot be reached.
    """

    def __init__(self, connection_string: str, service: type[Any] | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hyrelay-rpc-sync", daemon=True)
        self._thread.start()
        self._service = service
        self._closed = False
        try:
            self._client: Client = self._run(self._open(connection_string, options))
        except BaseException:
            self._stop()
            raise
        self._proxy: ServiceProxy | None = (
            proxy_class(service)(self._client, window=options.get("window", DEFAULT_WINDOW))
            if service is not None else None)

    @staticmethod
    async def _open(connection_string: str, options: dict[str, Any]) -> Client:
        connection: Any = connect(connection_string, **options)
        client: Client = await connection
        return client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def call(self, method: str, *args: Any, timeout: float | None = _DEFAULT, **kwargs: Any) -> Any:
        """Call *method*; see :meth:`hyrelay.rpc.Client.call`."""
        return self._run(self._client.call(method, *args, timeout=timeout, **kwargs))

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._run(self._client.notify(method, *args, **kwargs))

    def batch(self, calls: Iterable[tuple[str, Any] | tuple[str, Any, bool]], *,
              timeout: float | None = _DEFAULT) -> list[Any]:
        return self._run(self._client.batch(calls, timeout=timeout))

    def discover(self) -> dict[str, Any]:
        return self._run(self._client.discover())

    def stream(self, method: str, *args: Any, window: int = DEFAULT_WINDOW, **kwargs: Any) -> Iterator[Any]:
        """Iterate over a streaming method's items (closing the iterator cancels the stream)."""
        return self._iterate(self._client.stream(method, *args, window=window, **kwargs))

    def _iterate(self, items: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(items.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(items.aclose())

    def __getattr__(self, name: str) -> Any:
        proxy = self.__dict__.get("_proxy")
        if proxy is None or name.startswith("_"):
            raise AttributeError(name)
        op = next((op for op in type(proxy)._operations.values() if op.attr == name and not op.event), None)
        if op is None:
            raise AttributeError(f"{self._service.__name__ if self._service else 'service'} has no operation {name!r}")
        method = getattr(proxy, name)
        if op.streaming:
            return lambda *args, **kwargs: self._iterate(method(*args, **kwargs))
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
