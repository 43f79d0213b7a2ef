"""Services described from their classes: ``@operation`` and ``@event`` methods, typed by their hints.

Each decorated method becomes an :class:`Operation`: its parameters become a msgspec struct that
decodes (and validates) the request's ``params`` straight from JSON, by name or by position, and
its return annotation checks the result. A parameter annotated :class:`Context` is not part of
the wire signature: it is filled with the call's context.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import msgspec

from .errors import INTERNAL_ERROR, INVALID_PARAMS, NoCallbackChannel, RpcError
from .wire import DISCOVER, RESERVED_PREFIXES, params_message

if TYPE_CHECKING:
    from .caller import Caller

__all__ = ["operation", "event", "Operation", "ServiceSpec", "spec_of", "Context"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_MARK = "__hyrelay_rpc__"
_EMPTY_PARAMS = msgspec.Raw(b"[]")


@dataclass(frozen=True, slots=True)
class _Options:
    name: str | None
    oneway: bool
    event: bool
    thread: bool


# -- decorators ------------------------------------------------------------------------------------


@overload
def operation(func: F, /) -> F: ...
@overload
def operation(*, name: str | None = None, oneway: bool = False, thread: bool = True) -> Callable[[F], F]: ...


def operation(func: Any = None, /, *, name: str | None = None, oneway: bool = False,
              thread: bool = True) -> Any:
    """Mark a method as an operation of its service.

    Use bare (``@operation``) or with options (``@operation(oneway=True)``).

    Args:
        name: the method name on the wire (default: the Python name).
        oneway: callers send a notification and do not wait; the method's result is dropped.
        thread: a plain (non-async) method runs in a worker thread so it cannot stall the
            connection; False runs it inline, for methods that are cheap and never block.
    """
    def mark(f: F) -> F:
        setattr(f, _MARK, _Options(name, oneway, False, thread))
        return f
    return mark(func) if func is not None else mark


@overload
def event(func: F, /) -> F: ...
@overload
def event(*, name: str | None = None, thread: bool = True) -> Callable[[F], F]: ...


def event(func: Any = None, /, *, name: str | None = None, thread: bool = True) -> Any:
    """Mark a method as an event handler: it receives what ``publish(..., name, ...)`` sends.

    An event is a notification: publishers never wait for handlers, and results are dropped.
    """
    def mark(f: F) -> F:
        setattr(f, _MARK, _Options(name, True, True, thread))
        return f
    return mark(func) if func is not None else mark


# -- the call context ------------------------------------------------------------------------------


class Context:
    """What an operation learns about its call; declare a parameter ``ctx: rpc.Context`` to get it.

    Attributes:
        method: the method name called.
        request_id: the JSON-RPC id (None for a notification).
        transport: ``"websocket"`` (a relayed or direct connection) or ``"http"``.
        headers: the connection's (WebSocket) or the request's (HTTP) headers.
        connection: the HybridConnection the call came on (None over HTTP or a direct socket).
    """

    __slots__ = ("method", "request_id", "transport", "headers", "connection", "_caller")

    def __init__(self, method: str, request_id: Any, transport: Literal["websocket", "http"],
                 caller: Caller | None, headers: cabc.Mapping[str, str] | None = None,
                 connection: Any = None) -> None:
        self.method = method
        self.request_id = request_id
        self.transport = transport
        self.headers: cabc.Mapping[str, str] = headers if headers is not None else {}
        self.connection = connection
        self._caller = caller

    @property
    def client(self) -> Caller:
        """Calls to the caller's callbacks over the same connection: ``await ctx.client.call("progress", 50)``.

        Raises:
            NoCallbackChannel: the call came over HTTP (or as an event): there is nobody to call back.
        """
        if self._caller is None:
            raise NoCallbackChannel(f"'{self.method}' was called over {self.transport}: it has no callback channel")
        return self._caller

    def callbacks(self, interface: type[T]) -> T:
        """A typed proxy for the caller's callbacks, with the signatures of *interface*'s operations."""
        return self.client.proxy(interface)

    def __repr__(self) -> str:
        return f"<Context {self.method} id={self.request_id!r} via {self.transport}>"


# -- operations ------------------------------------------------------------------------------------


def _is_context(hint: Any) -> bool:
    if hint is Context:
        return True
    args = typing.get_args(hint)
    # Optional[Context] and Context | None
    return bool(args) and Context in args and all(a is Context or a is type(None) for a in args)


_ASYNC_ITER = {cabc.AsyncIterator, cabc.AsyncIterable, cabc.AsyncGenerator, typing.AsyncIterator,
               typing.AsyncIterable, typing.AsyncGenerator}
_SYNC_ITER = {cabc.Iterator, cabc.Iterable, cabc.Generator, typing.Iterator, typing.Iterable, typing.Generator}


def _item_type(hint: Any, origins: set[Any]) -> Any:
    if hint is inspect.Signature.empty:
        return Any
    origin = typing.get_origin(hint)
    if origin in origins or hint in origins:
        args = typing.get_args(hint)
        return args[0] if args else Any
    return Any


class Operation:
    """One callable method of a service (or of a caller's callbacks).

    Attributes:
        name: the method name on the wire.
        oneway, event: a notification-only method (``event`` also marks it as an event handler).
        streaming: an (async) generator: its items stream to the caller.
        params: names of the wire parameters, in order.
        result_type: the return annotation (item type for a stream; Any when not annotated).
    """

    def __init__(self, name: str, func: Callable[..., Any], options: _Options, *, owner: str = "") -> None:
        self.name = name
        self.attr = func.__name__
        self.func = func
        self.oneway = options.oneway
        self.event = options.event
        self.thread = options.thread
        self.doc = inspect.getdoc(func) or ""
        self.is_async_gen = inspect.isasyncgenfunction(func)
        self.is_sync_gen = inspect.isgeneratorfunction(func)
        self.streaming = self.is_async_gen or self.is_sync_gen
        self.is_coroutine = inspect.iscoroutinefunction(func)
        if self.streaming and self.oneway:
            raise TypeError(f"{owner}{name}: a streaming operation cannot be one-way")
        signature = inspect.signature(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:
            raise TypeError(f"{owner}{name}: cannot resolve its type hints: {exc}") from exc
        parameters = list(signature.parameters.values())[1:]  # without self
        self.ctx_name: str | None = None
        fields: list[tuple[Any, ...]] = []
        # How to turn decoded values into a call: (kind, index into values or -1 for ctx, name).
        plan: list[tuple[str, int, str]] = []
        seen_default = False
        for p in parameters:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{owner}{name}: *args and **kwargs cannot be described on the wire")
            hint = hints.get(p.name, Any)
            kind = "kw" if p.kind is p.KEYWORD_ONLY else "pos"
            if _is_context(hint):
                self.ctx_name = p.name
                plan.append((kind, -1, p.name))
                continue
            if p.default is p.empty:
                if seen_default:
                    raise TypeError(f"{owner}{name}: required parameter '{p.name}' follows one with a default")
                fields.append((p.name, hint))
            else:
                seen_default = True
                fields.append((p.name, hint, p.default))
            plan.append((kind, len(fields) - 1, p.name))
        self.params: list[str] = [f[0] for f in fields]
        self.param_types: dict[str, Any] = {f[0]: f[1] for f in fields}
        self.required = sum(1 for f in fields if len(f) == 2)
        self.defaults: dict[str, Any] = {f[0]: f[2] for f in fields if len(f) == 3}
        self._plan = plan
        # The common case (positional parameters only, no context) calls with the values as they are.
        self._simple = all(k == "pos" and i >= 0 for k, i, _ in plan)
        ret = hints.get("return", inspect.Signature.empty)
        if self.is_async_gen:
            self.result_type = _item_type(ret, _ASYNC_ITER)
        elif self.is_sync_gen:
            self.result_type = _item_type(ret, _SYNC_ITER)
        else:
            self.result_type = Any if ret is inspect.Signature.empty else ret
        struct = f"{owner}{name}".replace(".", "_") or "params"
        try:
            kw = msgspec.defstruct(f"{struct}_params", fields, forbid_unknown_fields=True)
            pos = msgspec.defstruct(f"{struct}_args", fields, array_like=True, forbid_unknown_fields=True)
            self._by_name = msgspec.json.Decoder(kw)
            self._by_position = msgspec.json.Decoder(pos)
            self.result_decoder = msgspec.json.Decoder(self.result_type)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{owner}{name}: its parameter or result types are not supported: {exc}") from exc
        self._check_result = self.result_type is not Any and not self.oneway
        self.signature = signature.replace(parameters=[p for p in parameters if p.name != self.ctx_name])

    # -- service side ------------------------------------------------------------------------------
    def bind(self, raw: msgspec.Raw | bytes) -> tuple[Any, ...]:
        """Decode and validate ``params`` (raw JSON, by name or by position) into the parameter values.

        Raises:
            RpcError: -32602 naming the parameter that is missing, unexpected or of the wrong type.
        """
        data = bytes(raw) if isinstance(raw, msgspec.Raw) else raw
        if not data:
            data = b"[]"  # params omitted: every parameter takes its default
        first = data.lstrip()[:1]
        try:
            if first == b"[":
                values = self._by_position.decode(data)
            elif first == b"{":
                values = self._by_name.decode(data)
            else:
                raise RpcError("invalid params: must be an array or an object", code=INVALID_PARAMS)
        except msgspec.ValidationError as exc:
            raise RpcError(params_message(str(exc), self.params, self.required), code=INVALID_PARAMS) from None
        except msgspec.DecodeError as exc:
            raise RpcError(f"invalid params: {exc}", code=INVALID_PARAMS) from None
        return msgspec.structs.astuple(values)

    def _call(self, instance: Any, values: tuple[Any, ...], ctx: Context | None) -> Any:
        if self._simple:
            return self.func(instance, *values)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for kind, index, name in self._plan:
            value = ctx if index < 0 else values[index]
            if kind == "pos":
                args.append(value)
            else:
                kwargs[name] = value
        return self.func(instance, *args, **kwargs)

    async def invoke(self, instance: Any, values: tuple[Any, ...], ctx: Context | None) -> Any:
        """Run the method (not a stream): awaited if async, in a worker thread if sync (unless thread=False)."""
        if self.is_coroutine:
            return await self._call(instance, values, ctx)
        if self.thread:
            return await asyncio.to_thread(self._call, instance, values, ctx)
        result = self._call(instance, values, ctx)
        if inspect.isawaitable(result):  # a plain function that returns an awaitable
            result = await result
        return result

    def open_stream(self, instance: Any, values: tuple[Any, ...], ctx: Context | None) -> cabc.AsyncIterator[Any]:
        """The items of a streaming method; a sync generator is advanced in a worker thread."""
        gen = self._call(instance, values, ctx)
        if self.is_async_gen:
            return gen  # type: ignore[no-any-return]
        return _threaded(gen) if self.thread else _inline(gen)

    def check_result(self, value: Any) -> Any:
        """Validate (and convert) a result against the return annotation.

        Raises:
            RpcError: -32603 when the method returned something its annotation does not allow.
        """
        if not self._check_result:
            return value
        try:
            return msgspec.convert(value, self.result_type, from_attributes=True)
        except msgspec.ValidationError as exc:
            raise RpcError(f"'{self.name}' returned an invalid result: {exc}", code=INTERNAL_ERROR) from None

    def __repr__(self) -> str:
        flags = "".join(f" {f}" for f in ("oneway", "event", "streaming") if getattr(self, f))
        return f"<Operation {self.name}({', '.join(self.params)}){flags}>"


async def _threaded(gen: cabc.Iterator[Any]) -> cabc.AsyncIterator[Any]:
    done = object()
    try:
        while True:
            item = await asyncio.to_thread(next, gen, done)
            if item is done:
                return
            yield item
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()


async def _inline(gen: cabc.Iterator[Any]) -> cabc.AsyncIterator[Any]:
    for item in gen:
        yield item


# -- services --------------------------------------------------------------------------------------


class ServiceSpec:
    """The operations and events of a service class, by wire name.

    Attributes:
        title, version, description: for the OpenRPC document (class name, ``__version__`` or
            "1.0.0", docstring).
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.title = getattr(cls, "__rpc_title__", None) or cls.__name__
        self.version = str(getattr(cls, "__version__", None) or "1.0.0")
        self.description = inspect.getdoc(cls) or ""
        owner = f"{cls.__qualname__}."
        self.operations: dict[str, Operation] = {}
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            names.update(dict.fromkeys(vars(klass)))
        for attr in names:
            func = inspect.getattr_static(cls, attr, None)
            options = getattr(func, _MARK, None)
            if not isinstance(options, _Options):
                continue
            if not inspect.isfunction(func):
                raise TypeError(f"{owner}{attr}: only plain methods can be operations (not static or class methods)")
            name = options.name or attr
            if name.startswith(RESERVED_PREFIXES):
                raise TypeError(f"{owner}{attr}: method names starting with {' or '.join(RESERVED_PREFIXES)} "
                                "are reserved")
            if name in self.operations:
                raise TypeError(f"{owner}{attr}: the name '{name}' is used twice")
            self.operations[name] = Operation(name, func, options, owner=owner)
        self._discover = Operation(DISCOVER, _discover, _Options(DISCOVER, False, False, False), owner=owner)
        self._openrpc: dict[str, Any] | None = None

    def lookup(self, name: str) -> Operation | None:
        """The operation or event called *name*; ``rpc.discover`` is built in."""
        op = self.operations.get(name)
        if op is None and name == DISCOVER:
            return self._discover
        return op

    @property
    def methods(self) -> list[Operation]:
        return [op for op in self.operations.values() if not op.event]

    @property
    def events(self) -> list[Operation]:
        return [op for op in self.operations.values() if op.event]

    def openrpc(self) -> dict[str, Any]:
        """The service's OpenRPC document (built once)."""
        if self._openrpc is None:
            from .openrpc import document
            self._openrpc = document(self)
        return self._openrpc

    def __repr__(self) -> str:
        return f"<ServiceSpec {self.title}: {', '.join(self.operations)}>"


def _discover(instance: Any) -> dict[str, Any]:
    """Returns the OpenRPC document describing this service."""
    return spec_of(instance).openrpc()


_specs: dict[type, ServiceSpec] = {}


def spec_of(service: Any) -> ServiceSpec:
    """The spec of a service class (or of an instance's class), built once per class.

    Raises:
        TypeError: a decorated method cannot be described (see the message).
    """
    cls = service if isinstance(service, type) else type(service)
    spec = _specs.get(cls)
    if spec is None:
        spec = _specs[cls] = ServiceSpec(cls)
    return spec
