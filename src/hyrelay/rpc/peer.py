"""One JSON-RPC session over one connection, in both directions.

Either end can call the other: a client calls the service, and the service calls back the
client's callbacks on the same connection. Each side numbers its own requests, and a response
always answers a request of the side that receives it, so the two id spaces never mix.

Many calls are in flight at once; answers are matched by id. Incoming calls each run in their own
task, at most ``max_concurrency`` at a time: beyond that the peer stops reading, which pushes
back on the sender through the socket instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from msgspec import UNSET

from .channel import Channel, ChannelClosed
from .dispatch import Credit, Dispatcher
from .errors import (
    CANCELLED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    ConnectionLost,
    DeadlineExceeded,
    InternalError,
    RemoteError,
    RpcError,
    error_from_wire,
)
from .outbox import Outbox
from .service import Context, Operation
from .wire import (
    CANCEL,
    CREDIT,
    ITEM,
    STREAM,
    Envelope,
    Id,
    cancel_params,
    credit_params,
    decode_batch,
    decode_message,
    encode_batch,
    encode_cancel,
    encode_credit,
    encode_error,
    encode_notification,
    encode_request,
    encode_result,
    encode_stream,
    is_batch,
    item_params,
    stream_params,
)

__all__ = ["Peer"]

_log = logging.getLogger("hyrelay.rpc")

_any: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


class _Served:
    """An incoming request being answered: its task, and the credit of a stream."""

    __slots__ = ("task", "cancelled", "credit")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False
        self.credit: Credit | None = None


class _Incoming:
    """Items of a stream this side consumes, buffered up to the window it granted."""

    __slots__ = ("items", "window", "done", "error", "waiter")

    def __init__(self, window: int) -> None:
        self.items: collections.deque[msgspec.Raw] = collections.deque()
        self.window = window
        self.done = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def push(self, item: msgspec.Raw) -> bool:
        """Buffer an item; False if the other side sent more than it was granted."""
        if self.done:
            return True
        if len(self.items) >= self.window:
            return False
        self.items.append(item)
        self._wake()
        return True

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self._wake()


class Peer:
    """A JSON-RPC session over *channel*, serving *local* (a service or callbacks object, or None).

    Args:
        channel: the connection (see :mod:`.channel`).
        local: the object whose operations the other side may call.
        max_concurrency: incoming calls run at once; beyond it the peer stops reading.
        transport: what ``Context.transport`` says.
        coalesce: both ends speak ``hyrelay.rpc.v1`` (see :mod:`.outbox`): messages written in one
            event-loop iteration leave as one array, and arrays that arrive are handled element by
            element. Without it, plain JSON-RPC 2.0: one message each, arrays are batches.
    """

    def __init__(self, channel: Channel, *, local: Any | None = None, max_concurrency: int = 1000,
                 transport: str = "websocket", coalesce: bool = False) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.channel = channel
        self.dispatcher = Dispatcher(local)
        self.transport = transport
        self.max_concurrency = max_concurrency
        self._loop = asyncio.get_running_loop()
        self._next_id = 0
        self._calls: dict[Id, asyncio.Future[msgspec.Raw]] = {}
        self._streams: dict[Id, _Incoming] = {}
        self._served: dict[Id, _Served] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = 0
        self._room: asyncio.Future[None] | None = None
        self._error: RemoteError | None = None
        self._closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._caller: Any = None
        self.coalesce = coalesce
        self._outbox = Outbox(channel, coalesce=coalesce, on_closed=self._write_failed)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Peer:
        """Start reading; returns self."""
        if self._reader is None:
            self._reader = self._loop.create_task(self._read_loop())
        return self

    async def run(self) -> None:
        """Start (if needed) and return once the connection is closed."""
        self.start()
        await self._closed.wait()

    @property
    def is_open(self) -> bool:
        return self._error is None

    @property
    def error(self) -> RemoteError | None:
        """Why the session ended (a ConnectionLost), or None while it is open."""
        return self._error

    @property
    def pending(self) -> int:
        """Calls this side is waiting on."""
        return len(self._calls) + len(self._streams)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self, code: int = 1000, reason: str = "", *, flush_timeout: float = 5.0) -> None:
        """Fail what is pending with ConnectionLost, cancel running calls and close the connection.

        What is already written (a notification just sent, say) is flushed first, for up to
        *flush_timeout* seconds.
        """
        if self._error is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.flush(), flush_timeout)
        self._shutdown(ConnectionLost("the connection was closed by this side", data={"code": code, "reason": reason}))
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.channel.close(code, reason)

    def _shutdown(self, error: RemoteError) -> None:
        if self._error is not None:
            return
        self._error = error
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(_copy(error))
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.finish(_copy(error))
        # Nobody can receive their answers any more.
        for task in list(self._tasks):
            task.cancel()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        self._outbox.abort()
        self._closed.set()
        _log.debug("event=rpc_session_closed reason=%r", error.message)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.channel.recv()
                await self._on_data(data)
        except ChannelClosed as exc:
            detail = f"code {exc.code}" + (f": {exc.reason}" if exc.reason else "")
            self._shutdown(ConnectionLost(f"the connection closed ({detail}) before the answer came",
                                          data={"code": exc.code, "reason": exc.reason}))
        except asyncio.CancelledError:
            self._shutdown(ConnectionLost("the connection was closed by this side"))
            raise
        except Exception as exc:  # a bug of ours: do not leave callers hanging
            _log.exception("event=rpc_reader_failed")
            self._shutdown(ConnectionLost(f"the connection failed: {exc!r}"))
            with contextlib.suppress(Exception):
                await self.channel.close(1011, "Internal error")

    # -- sending -----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._error is not None:
            raise _copy(self._error)

    async def _send_quiet(self, data: bytes) -> None:
        """Send, ignoring a closed channel (the reader reports the close)."""
        with contextlib.suppress(ChannelClosed):
            await self._outbox.put(data)

    def _send_later(self, data: bytes) -> None:
        """Send without waiting (for cancels and errors sent from callbacks)."""
        if self._error is not None:
            return
        if self.coalesce:
            with contextlib.suppress(ChannelClosed):
                self._outbox.put_nowait(data)
        else:
            self._spawn(self._send_quiet(data))

    def _write_failed(self, exc: ChannelClosed) -> None:
        self._shutdown(ConnectionLost(f"the connection closed (code {exc.code}) before the answer came",
                                      data={"code": exc.code, "reason": exc.reason}))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, data: bytes) -> None:
        try:
            await self._outbox.put(data)
        except ChannelClosed as exc:
            self._write_failed(exc)
            raise _copy(self._error) from None  # type: ignore[arg-type]

    # -- calling the other side --------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def call(self, method: str, params: Any = UNSET, *, timeout: float | None = None,
                   decoder: msgspec.json.Decoder[Any] | None = None) -> Any:
        """Call *method* and return its result (decoded by *decoder*, else as plain JSON data).

        Raises:
            RemoteError: the other side answered with an error (the subclass follows the code);
                DeadlineExceeded after *timeout* seconds; ConnectionLost if the connection closes.
            TypeError: *params* cannot be encoded as JSON.
        """
        if self._error is not None:
            raise _copy(self._error, from_call=True)
        id = self._new_id()
        message = encode_request(method, params, id)
        future: asyncio.Future[msgspec.Raw] = self._loop.create_future()
        self._calls[id] = future
        timer = self._loop.call_later(timeout, self._expire, id, method, timeout) if timeout is not None else None
        try:
            await self._send(message)
            raw = await future
            return _decode(raw, decoder or _any, method)
        except RemoteError as exc:
            exc.from_call = True
            raise
        except asyncio.CancelledError:
            # The caller gave up: tell the other side, so the work stops there too.
            if self._calls.pop(id, None) is not None:
                self._send_later(encode_cancel(id))
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._calls.pop(id, None)

    def _expire(self, id: Id, method: str, timeout: float) -> None:
        future = self._calls.pop(id, None)
        if future is not None and not future.done():
            future.set_exception(DeadlineExceeded(f"'{method}' got no answer within {timeout:g} s",
                                                  data={"timeout": timeout}))
            self._send_later(encode_cancel(id))

    async def notify(self, method: str, params: Any = UNSET) -> None:
        """Send a notification: no answer, no waiting beyond the write.

        Raises:
            ConnectionLost: the connection is closed.
        """
        try:
            self._check_open()
            await self._send(encode_notification(method, params))
        except RemoteError as exc:
            exc.from_call = True
            raise

    async def batch(self, calls: list[tuple[str, Any, bool]], *, timeout: float | None = None
                    ) -> list[Any]:
        """Send ``(method, params, notification)`` triples as one batch; results (or RemoteErrors) in order.

        Notifications get None in their place.
        """
        self._check_open()
        if not calls:
            raise ValueError("a batch needs at least one call")
        parts: list[bytes] = []
        futures: list[tuple[Id, asyncio.Future[msgspec.Raw]] | None] = []
        for method, params, notification in calls:
            if notification:
                parts.append(encode_notification(method, params))
                futures.append(None)
            else:
                id = self._new_id()
                parts.append(encode_request(method, params, id))
                future: asyncio.Future[msgspec.Raw] = self._loop.create_future()
                futures.append((id, future))
        for entry in futures:
            if entry is not None:
                self._calls[entry[0]] = entry[1]
        waiting = [entry[1] for entry in futures if entry is not None]
        try:
            await self._send(encode_batch(parts))
            if waiting:
                done, _ = await asyncio.wait(waiting, timeout=timeout)
                if len(done) < len(waiting):
                    for entry in futures:
                        if entry is not None and not entry[1].done():
                            self._calls.pop(entry[0], None)
                            entry[1].set_exception(DeadlineExceeded(
                                f"the batch got no answer within {timeout:g} s", data={"timeout": timeout}))
                            self._send_later(encode_cancel(entry[0]))
        except RemoteError as exc:
            exc.from_call = True
            raise
        except asyncio.CancelledError:
            for entry in futures:
                if entry is not None and self._calls.pop(entry[0], None) is not None:
                    self._send_later(encode_cancel(entry[0]))
            raise
        finally:
            for entry in futures:
                if entry is not None:
                    self._calls.pop(entry[0], None)
        results: list[Any] = []
        for (method, _, _), entry in zip(calls, futures, strict=True):
            if entry is None:
                results.append(None)
                continue
            failure = entry[1].exception()
            results.append(failure if failure is not None else _decode(entry[1].result(), _any, method, raise_=False))
        return results

    async def stream(self, method: str, params: Any = UNSET, *, window: int = 16,
                     decoder: msgspec.json.Decoder[Any] | None = None) -> AsyncIterator[Any]:
        """The items *method* streams, at most *window* of them sent ahead of what was taken.

        Leaving the loop early (break, an exception) cancels the stream on the other side.

        Raises:
            RemoteError: as for :meth:`call`, from the point where it happened.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        self._check_open()
        id = self._new_id()
        incoming = _Incoming(window)
        self._streams[id] = incoming
        decode = decoder or _any
        grant_every = max(1, window // 2)
        taken = 0
        try:
            await self._send(encode_stream(method, params, window, id))
            while True:
                while not incoming.items:
                    if incoming.done:
                        if incoming.error is not None:
                            raise incoming.error
                        return
                    incoming.waiter = self._loop.create_future()
                    await incoming.waiter
                raw = incoming.items.popleft()
                taken += 1
                # Credit goes back as items are taken, in half-window steps to keep messages few.
                if taken >= grant_every and not incoming.done:
                    await self._send(encode_credit(id, taken))
                    taken = 0
                yield _decode(raw, decode, method)
        except RemoteError as exc:
            exc.from_call = True
            raise
        finally:
            if self._streams.pop(id, None) is not None and not incoming.done:
                self._send_later(encode_cancel(id))

    # -- receiving ---------------------------------------------------------------------------------
    async def _on_data(self, data: str | bytes) -> None:
        first = data[:1]
        if first != "{" and first != b"{" and is_batch(data):
            if self.coalesce:
                await self._on_coalesced(data)
            else:
                await self._on_batch(data)
            return
        await self._on_message(data)

    async def _elements(self, data: str | bytes, empty: str) -> list | None:
        """The elements of a JSON array, or None after answering why there are none to handle."""
        try:
            elements = decode_batch(data)
        except RpcError as err:
            await self._send_quiet(encode_error(None, err.code, err.message))
            return None
        if not elements:
            await self._send_quiet(encode_error(None, INVALID_REQUEST, f"Invalid request: an empty {empty}"))
            return None
        return elements

    async def _on_coalesced(self, data: str | bytes) -> None:
        """An array from a ``hyrelay.rpc.v1`` peer: independent messages, handled one by one."""
        for raw in await self._elements(data, "array") or ():
            await self._on_message(raw)

    async def _on_message(self, data: str | bytes | msgspec.Raw) -> None:
        try:
            envelope = decode_message(data)
        except RpcError as err:
            await self._send_quiet(encode_error(_id_of(err), err.code, err.message))
            return
        if envelope.method is UNSET:
            self._on_response(envelope)
        elif envelope.method[:2] == "$/":
            await self._on_extension(envelope)
        else:
            prepared = self._prepare(envelope)
            if isinstance(prepared, bytes):
                await self._send_quiet(prepared)
            elif prepared is not None:
                await self._admit()
                self._start(*prepared)

    def _prepare(self, envelope: Envelope) -> tuple[Operation, tuple[Any, ...], Any, int | None] | bytes | None:
        """Look up and bind a request: (op, values, id, stream window), or an error response (bytes)."""
        try:
            op = self.dispatcher.lookup(envelope.method)  # type: ignore[arg-type]
            values = op.bind(envelope.params)
        except RpcError as err:
            if envelope.id is UNSET:
                _log.info("event=notification_refused method=%s code=%d message=%r",
                          envelope.method, err.code, err.message)
                return None
            return encode_error(envelope.id, err.code, err.message, err.data)
        return op, values, envelope.id, None

    async def _admit(self) -> None:
        """Wait for room among the running calls (stop reading until then)."""
        while self._running >= self.max_concurrency and self._error is None:
            self._room = self._loop.create_future()
            await self._room

    def _register(self, id: Any) -> _Served | None | bytes:
        if id is UNSET:
            return None
        if id in self._served:
            return encode_error(id, INVALID_REQUEST, f"Invalid request: id {id!r} is already in use by a running call")
        served = self._served[id] = _Served()
        return served

    def _start(self, op: Operation, values: tuple[Any, ...], id: Any, window: int | None) -> None:
        served = self._register(id)
        if isinstance(served, bytes):
            self._send_later(served)
            return
        self._running += 1
        task = self._spawn(self._answer_and_send(op, values, id, served, window))
        if served is not None:
            served.task = task

    def _context(self, op: Operation, id: Any) -> Context | None:
        if op.ctx_name is None:
            return None
        if self._caller is None:
            from .caller import PeerCaller
            self._caller = PeerCaller(self)
        return Context(op.name, None if id is UNSET else id, "websocket", self._caller,
                       self.channel.headers, self.channel.connection)

    async def _answer(self, op: Operation, values: tuple[Any, ...], id: Any, served: _Served | None,
                      window: int | None) -> bytes | None:
        ctx = self._context(op, id)
        try:
            if window is not None and served is not None:
                served.credit = Credit(window)
                return await self.dispatcher.run_stream(op, values, id, ctx, served.credit, self._outbox.put)
            return await self.dispatcher.run(op, values, id, ctx)
        except asyncio.CancelledError:
            if served is not None and served.cancelled and self._error is None:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                return encode_error(id, CANCELLED, "Cancelled: the caller cancelled the call")
            raise
        except ChannelClosed:
            return None
        finally:
            self._running -= 1
            if served is not None and self._served.get(id) is served:
                del self._served[id]
            if self._room is not None and not self._room.done():
                self._room.set_result(None)

    async def _answer_and_send(self, op: Operation, values: tuple[Any, ...], id: Any, served: _Served | None,
                               window: int | None) -> None:
        response = await self._answer(op, values, id, served, window)
        if response is not None:
            await self._send_quiet(response)

    async def _on_batch(self, data: str | bytes) -> None:
        elements = await self._elements(data, "batch")
        if elements is None:
            return
        answers: list[asyncio.Future[bytes | None]] = []
        for raw in elements:
            try:
                envelope = decode_message(raw)
            except RpcError as err:
                answers.append(_done(encode_error(_id_of(err), err.code, err.message)))
                continue
            if envelope.method is UNSET:
                self._on_response(envelope)
                continue
            if envelope.method[:2] == "$/":
                await self._on_extension(envelope)
                continue
            prepared = self._prepare(envelope)
            if prepared is None or isinstance(prepared, bytes):
                if prepared is not None:
                    answers.append(_done(prepared))
                continue
            op, values, id, _ = prepared
            served = self._register(id)
            if isinstance(served, bytes):
                answers.append(_done(served))
                continue
            await self._admit()
            self._running += 1
            if served is None:  # a notification: nothing to wait for in the batch's answer
                self._spawn(self._answer_and_send(op, values, id, None, None))
                continue
            served.task = self._spawn(self._answer(op, values, id, served, None))
            answers.append(served.task)
        if answers:
            self._spawn(self._send_batch(answers))

    async def _send_batch(self, answers: list[asyncio.Future[bytes | None]]) -> None:
        results = await asyncio.gather(*answers, return_exceptions=True)
        parts = [r for r in results if isinstance(r, bytes)]
        if parts:
            await self._send_quiet(encode_batch(parts))

    def _on_response(self, envelope: Envelope) -> None:
        id = envelope.id
        has_result = bool(envelope.result)
        if id is UNSET or (not has_result and envelope.error is UNSET):
            _log.info("event=rpc_message_invalid reason=neither_request_nor_response")
            self._send_later(encode_error(None if id is UNSET else id, INVALID_REQUEST,
                                          "Invalid request: neither a request nor a response"))
            return
        future = self._calls.pop(id, None)
        if future is not None:
            if not future.done():
                if envelope.error is not UNSET:
                    future.set_exception(_remote_error(envelope.error))
                else:
                    future.set_result(envelope.result)
            return
        stream = self._streams.get(id)
        if stream is not None:
            stream.finish(_remote_error(envelope.error) if envelope.error is not UNSET else None)
            return
        # Late (after a deadline or a cancel) or bogus: nothing waits for it.
        _log.debug("event=rpc_response_unmatched id=%r", id)

    async def _on_extension(self, envelope: Envelope) -> None:
        method = envelope.method
        try:
            if method == ITEM:
                item = item_params.decode(envelope.params)
                stream = self._streams.get(item.id)
                if stream is not None and not stream.push(item.item):
                    self._streams.pop(item.id, None)
                    stream.finish(InternalError("the stream sent more items than its window allows"))
                    self._send_later(encode_cancel(item.id))
            elif method == CREDIT:
                credit = credit_params.decode(envelope.params)
                served = self._served.get(credit.id)
                if served is not None and served.credit is not None and credit.n > 0:
                    served.credit.grant(credit.n)
            elif method == CANCEL:
                target = cancel_params.decode(envelope.params).id
                served = self._served.get(target)
                if served is not None and not served.cancelled and served.task is not None:
                    served.cancelled = True
                    served.task.cancel()
            elif method == STREAM:
                await self._open_stream(envelope)
                return
            else:
                raise RpcError(f"Method not found: '{method}'", code=METHOD_NOT_FOUND)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            if envelope.id is not UNSET:
                await self._send_quiet(encode_error(envelope.id, INVALID_PARAMS, f"invalid params for {method}: {exc}"))
            return
        except RpcError as err:
            if envelope.id is not UNSET:
                await self._send_quiet(encode_error(envelope.id, err.code, err.message, err.data))
            return
        if envelope.id is not UNSET:  # sent as a request: acknowledge
            await self._send_quiet(encode_result(envelope.id, None))

    async def _open_stream(self, envelope: Envelope) -> None:
        if envelope.id is UNSET:
            raise RpcError("Invalid request: $/stream must be a request (with an id)", code=INVALID_REQUEST)
        opened = stream_params.decode(envelope.params)
        if opened.window < 1:
            raise RpcError("invalid params for $/stream: window must be at least 1", code=INVALID_PARAMS)
        op = self.dispatcher.lookup(opened.method)
        if not op.streaming:
            raise RpcError(f"Invalid request: '{op.name}' does not stream; call it instead", code=INVALID_REQUEST)
        values = op.bind(opened.params)
        await self._admit()
        self._start(op, values, envelope.id, opened.window)


def _done(value: bytes | None) -> asyncio.Future[bytes | None]:
    future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _id_of(err: RpcError) -> Id:
    return err.data.get("id") if isinstance(err.data, dict) else None


def _copy(error: RemoteError, *, from_call: bool = False) -> RemoteError:
    # A fresh exception per raise: re-raising one object would pile up tracebacks.
    copy = type(error)(error.message, code=error.code, data=error.data)
    copy.from_call = from_call
    return copy


def _remote_error(error: Any) -> RemoteError:
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, int) and not isinstance(code, bool) and isinstance(message, str):
            return error_from_wire(code, message, error.get("data"))
    return InternalError(f"the answer carried a malformed error object: {error!r}", data=error)


def _decode(raw: msgspec.Raw, decoder: msgspec.json.Decoder[Any], method: str, *, raise_: bool = True) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        err = InternalError(f"'{method}' answered with an unexpected result: {exc}")
        if raise_:
            raise err from None
        return err
