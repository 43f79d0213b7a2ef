"""Calling the other side: untyped (``call("add", 1, 2)``) or through a typed proxy (``svc.add(1, 2)``).

The same API serves a client calling a service and a service calling its client's callbacks
(``ctx.client``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from msgspec import UNSET

from .service import Operation, spec_of
from .wire import DISCOVER

if TYPE_CHECKING:
    from .peer import Peer

__all__ = ["Caller", "PeerCaller", "ServiceProxy", "DEFAULT_WINDOW"]

T = TypeVar("T")

#: Stream items a caller lets the service send ahead of what it has read.
DEFAULT_WINDOW = 16


class _Default:
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Any = _Default()


def _params(args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    if args and kwargs:
        raise TypeError("JSON-RPC params are either positional or named, not both")
    if kwargs:
        return kwargs
    if args:
        return list(args)
    return UNSET


class Caller:
    """Calls methods of the other side of a connection.

    Attributes:
        default_timeout: seconds a call may take unless it says otherwise (None: no limit).
    """

    default_timeout: float | None = None

    async def _peer(self) -> Peer:
        raise NotImplementedError

    def ready_peer(self) -> Peer | None:
        """The open session, if there is one (a fast path that skips connecting)."""
        return None

    def _timeout(self, timeout: Any) -> float | None:
        return self.default_timeout if timeout is _DEFAULT else timeout

    async def call(self, method: str, *args: Any, timeout: float | None = _DEFAULT, **kwargs: Any) -> Any:
        """Call *method* with positional or named params; returns the result as plain JSON data.

        Args:
            timeout: seconds to wait for the answer (default: the caller's deadline); after it the
                call raises DeadlineExceeded and the service is told to cancel.

        Raises:
            RemoteError: the service answered with an error (MethodNotFound, InvalidParams, ...) or
                the call failed on the way (DeadlineExceeded, ConnectionLost, RelayUnavailable).
        """
        peer = self.ready_peer() or await self._peer()
        return await peer.call(method, _params(args, kwargs), timeout=self._timeout(timeout))

    async def call_with(self, method: str, params: Any = UNSET, *, timeout: float | None = _DEFAULT) -> Any:
        """:meth:`call` with ``params`` given as they go on the wire (a list, a dict, or nothing)."""
        peer = await self._peer()
        return await peer.call(method, params, timeout=self._timeout(timeout))

    async def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the other side runs *method* and answers nothing; returns once sent."""
        peer = await self._peer()
        await peer.notify(method, _params(args, kwargs))

    def stream(self, method: str, *args: Any, window: int = DEFAULT_WINDOW, **kwargs: Any) -> AsyncIterator[Any]:
        """Iterate over the items a streaming method yields: ``async for item in c.stream("ticks", 5)``.

        Args:
            window: items the service may send ahead of what this loop has taken; it pauses at the limit.
        """
        return self._stream(method, _params(args, kwargs), window, None)

    async def _stream(self, method: str, params: Any, window: int, decoder: Any) -> AsyncIterator[Any]:
        peer = await self._peer()
        items = peer.stream(method, params, window=window, decoder=decoder)
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()  # type: ignore[attr-defined]

    async def batch(self, calls: Iterable[tuple[str, Any] | tuple[str, Any, bool]], *,
                    timeout: float | None = _DEFAULT) -> list[Any]:
        """Send several calls as one JSON-RPC batch.

        Args:
            calls: ``(method, params)`` or ``(method, params, is_notification)``; params a list, a
                dict or None.

        Returns:
            For each call in order: its result, or the RemoteError it failed with (not raised);
            None for notifications.
        """
        triples = []
        for entry in calls:
            method, params = entry[0], entry[1]
            notification = bool(entry[2]) if len(entry) > 2 else False
            triples.append((method, UNSET if params is None else params, notification))
        peer = await self._peer()
        return await peer.batch(triples, timeout=self._timeout(timeout))

    async def discover(self) -> dict[str, Any]:
        """The other side's OpenRPC document (``rpc.discover``)."""
        return cast(dict[str, Any], await self.call_with(DISCOVER))

    def proxy(self, interface: type[T], *, timeout: float | None = _DEFAULT, window: int = DEFAULT_WINDOW) -> T:
        """A typed proxy: *interface*'s operations as async methods with the same signatures."""
        return cast(T, proxy_class(interface)(self, timeout=timeout, window=window))


class PeerCaller(Caller):
    """Calls over one established session (what ``ctx.client`` is)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def _peer(self) -> Peer:
        return self.peer

    def ready_peer(self) -> Peer | None:
        return self.peer


class ServiceProxy:
    """Base of typed proxies; every operation of the interface becomes an async method.

    ``call``, ``notify``, ``stream``, ``batch`` and ``discover`` are also there, untyped, unless the
    interface has operations with those names.
    """

    _operations: dict[str, Operation] = {}

    def __init__(self, caller: Caller, *, timeout: float | None = _DEFAULT, window: int = DEFAULT_WINDOW) -> None:
        self._caller = caller
        self._call_timeout = timeout
        self._window = window

    @property
    def rpc_caller(self) -> Caller:
        """The untyped caller behind this proxy."""
        return self._caller

    def with_options(self, *, timeout: float | None = _DEFAULT, window: int | None = None) -> ServiceProxy:
        """A proxy on the same connection with another deadline or stream window."""
        return type(self)(self._caller, timeout=self._call_timeout if timeout is _DEFAULT else timeout,
                          window=self._window if window is None else window)

    async def call(self, method: str, *args: Any, timeout: float | None = _DEFAULT, **kwargs: Any) -> Any:
        return await self._caller.call(method, *args, timeout=self._pick(timeout), **kwargs)

    async def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        await self._caller.notify(method, *args, **kwargs)

    def stream(self, method: str, *args: Any, window: int | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        return self._caller.stream(method, *args, window=window or self._window, **kwargs)

    async def batch(self, calls: Iterable[tuple[str, Any] | tuple[str, Any, bool]], *,
                    timeout: float | None = _DEFAULT) -> list[Any]:
        return await self._caller.batch(calls, timeout=self._pick(timeout))

    async def discover(self) -> dict[str, Any]:
        return await self._caller.discover()

    def _pick(self, timeout: Any) -> Any:
        return self._call_timeout if timeout is _DEFAULT else timeout

    def __repr__(self) -> str:
        return f"<{type(self).__name__} via {self._caller!r}>"


_proxies: dict[type, type[ServiceProxy]] = {}


def proxy_class(interface: type) -> type[ServiceProxy]:
    """The proxy class for *interface* (a service class, or any class with ``@operation`` methods)."""
    cls = _proxies.get(interface)
    if cls is None:
        spec = spec_of(interface)
        namespace: dict[str, Any] = {"_operations": dict(spec.operations), "__doc__": spec.description,
                                     "__slots__": ()}
        for op in spec.methods:
            namespace[op.attr] = _method(op)
        cls = _proxies[interface] = type(f"{interface.__name__}Proxy", (ServiceProxy,), namespace)
    return cls


def _method(op: Operation) -> Any:
    signature = op.signature
    name, decoder = op.name, op.result_decoder

    most, least = len(op.params), op.required
    positional_only = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in signature.parameters.values())

    def params(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The common case, positional arguments that fit, goes out as they are (binding costs
        # more than the rest of a call); anything else is checked against the signature here,
        # so a wrong call fails locally with Python's own TypeError.
        if not kwargs and positional_only and least <= len(args) <= most:
            return list(args) if args else UNSET
        bound = signature.bind(*args, **kwargs)
        return dict(bound.arguments) if bound.arguments else UNSET

    if op.streaming:
        def stream(self: ServiceProxy, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            return self._caller._stream(name, params(args, kwargs), self._window, decoder)
        method: Any = stream
    elif op.oneway:
        async def oneway(self: ServiceProxy, *args: Any, **kwargs: Any) -> None:
            peer = await self._caller._peer()
            await peer.notify(name, params(args, kwargs))
        method = oneway
    else:
        async def call(self: ServiceProxy, *args: Any, **kwargs: Any) -> Any:
            payload = params(args, kwargs)
            caller = self._caller
            peer = caller.ready_peer() or await caller._peer()
            return await peer.call(name, payload, timeout=caller._timeout(self._call_timeout), decoder=decoder)
        method = call
    method.__name__ = method.__qualname__ = op.attr
    method.__doc__ = op.doc
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
    return method
