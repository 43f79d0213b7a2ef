"""Running calls on a local object: look the method up, run it, encode the answer.

Shared by the WebSocket peer and the HTTP handler, so both answer exactly alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from msgspec import UNSET

from .channel import ChannelClosed
from .errors import INTERNAL_ERROR, METHOD_NOT_FOUND, RpcError
from .service import Context, Operation, ServiceSpec, spec_of
from .wire import Id, encode_error, encode_item, encode_result

__all__ = ["Dispatcher", "Credit"]

_log = logging.getLogger("hyrelay.rpc")


class Credit:
    """How many more stream items the caller can take; the producer waits at zero."""

    __slots__ = ("available", "_wake")

    def __init__(self, window: int) -> None:
        self.available = window
        self._wake: asyncio.Future[None] | None = None

    def grant(self, n: int) -> None:
        self.available += n
        if self.available > 0 and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def take(self) -> None:
        while self.available <= 0:
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        self.available -= 1


class Dispatcher:
    """Calls into *instance* (a service, or a caller's callbacks object); None serves nothing."""

    __slots__ = ("instance", "spec")

    def __init__(self, instance: Any | None) -> None:
        self.instance = instance
        self.spec: ServiceSpec | None = spec_of(instance) if instance is not None else None

    def lookup(self, method: str) -> Operation:
        """The operation called *method*.

        Raises:
            RpcError: -32601.
        """
        op = self.spec.lookup(method) if self.spec is not None else None
        if op is None:
            raise RpcError(f"Method not found: '{method}'", code=METHOD_NOT_FOUND)
        return op

    async def run(self, op: Operation, values: tuple[Any, ...], id: Id | Any, ctx: Context | None) -> bytes | None:
        """Run one call; returns the encoded response (None for a notification, whose errors are logged).

        A streaming operation called this way answers with all its items as an array.
        CancelledError propagates: whoever cancelled decides what to answer.
        """
        try:
            if op.streaming:
                items = op.open_stream(self.instance, values, ctx)
                try:
                    result: Any = [op.check_result(item) async for item in items]
                finally:
                    await _close(items)
            else:
                result = op.check_result(await op.invoke(self.instance, values, ctx))
            if id is UNSET:
                return None
            return _encoded_result(op, id, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _failure(op, id, exc)

    async def run_stream(self, op: Operation, values: tuple[Any, ...], id: Id, ctx: Context | None,
                         credit: Credit, emit: Callable[[bytes], Awaitable[None]]) -> bytes | None:
        """Stream an operation's items through *emit* (``$/item``), never more than *credit* allows.

        The generator is only advanced after a credit is taken, so it runs at most the granted
        window ahead of what the caller consumed. Returns the final response (result null).
        ChannelClosed from *emit* propagates: nobody is left to answer.
        """
        items = op.open_stream(self.instance, values, ctx)
        try:
            while True:
                await credit.take()
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    break
                try:
                    message = encode_item(id, op.check_result(item))
                except (TypeError, msgspec.EncodeError) as exc:
                    raise RpcError(f"'{op.name}' yielded an item that is not JSON: {exc}",
                                   code=INTERNAL_ERROR) from None
                await emit(message)
            return encode_result(id, None)
        except asyncio.CancelledError:
            raise
        except ChannelClosed:
            raise
        except Exception as exc:
            return _failure(op, id, exc)
        finally:
            await _close(items)


def _encoded_result(op: Operation, id: Id, result: Any) -> bytes:
    try:
        return encode_result(id, result)
    except (TypeError, msgspec.EncodeError) as exc:
        raise RpcError(f"'{op.name}' returned a result that is not JSON: {exc}", code=INTERNAL_ERROR) from None


def _failure(op: Operation, id: Id | Any, exc: Exception) -> bytes | None:
    """The error response for *exc* (None for a notification: logged instead)."""
    if isinstance(exc, RpcError) and exc.from_call:
        # A call the operation made failed and it did not handle that: its code would mislead
        # (a nested MethodNotFound is not this method missing), so it is an internal error here.
        exc = RpcError(f"a call made by '{op.name}' failed: {type(exc).__name__}: {exc.message}",
                       code=INTERNAL_ERROR, data={"code": exc.code, "message": exc.message, "data": exc.data})
    if isinstance(exc, RpcError):
        if id is UNSET:
            _log.info("event=notification_failed method=%s code=%d message=%r", op.name, exc.code, exc.message)
            return None
        return encode_error(id, exc.code, exc.message, exc.data)
    _log.error("event=operation_failed method=%s id=%r error=%r", op.name, None if id is UNSET else id, exc,
               exc_info=exc)
    if id is UNSET:
        return None
    return encode_error(id, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", {"type": type(exc).__name__})


async def _close(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
