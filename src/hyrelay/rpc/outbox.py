"""Writing a peer's messages: one WebSocket message each, or coalesced when both ends agree.

With many calls in flight, most of the cost of a small call is per WebSocket message: framing,
a ``send()`` system call on each side, and a frame through the relay. When both peers speak the
``hyrelay.rpc.v1`` subprotocol, the messages queued during one event-loop iteration leave as one
JSON array, and the receiver handles its elements one by one, exactly as if they had come
separately (this is *not* a JSON-RPC batch: nothing waits for anything else). Peers that do not
offer the subprotocol get plain JSON-RPC 2.0, one message per WebSocket message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from .channel import Channel, ChannelClosed

__all__ = ["Outbox", "SUBPROTOCOL"]

_log = logging.getLogger("hyrelay.rpc")

#: Offered by our clients, chosen by our services: "arrays may hold independent messages".
SUBPROTOCOL = "hyrelay.rpc.v1"
#: One coalesced write holds at most this many messages / bytes.
MAX_MESSAGES = 512
MAX_BYTES = 1 << 20
#: Queued bytes above which senders wait for the writer (backpressure, not an unbounded queue).
HIGH_WATER = 4 << 20


class Outbox:
    """Sends on *channel*; with *coalesce*, through a queue that one writer task drains.

    Args:
        on_closed: called once if a write finds the channel closed.
    """

    def __init__(self, channel: Channel, *, coalesce: bool, on_closed: Callable[[ChannelClosed], None]) -> None:
        self.channel = channel
        self.coalesce = coalesce
        self._on_closed = on_closed
        self._queue: list[bytes] = []
        self._size = 0
        self._error: ChannelClosed | None = None
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        if coalesce:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def put(self, data: bytes) -> None:
        """Send (or queue) one message; waits while too much is queued.

        Raises:
            ChannelClosed: the channel is closed.
        """
        if not self.coalesce:
            try:
                await self.channel.send(data)
            except ChannelClosed as exc:
                self._closed(exc)
                raise
            return
        self.put_nowait(data)
        while self._size > HIGH_WATER and self._error is None:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room
        if self._error is not None:
            raise ChannelClosed(self._error.code, self._error.reason)

    def put_nowait(self, data: bytes) -> None:
        """Queue one message (coalescing mode), without waiting for room.

        Raises:
            ChannelClosed: the channel is closed.
        """
        if self._error is not None:
            raise ChannelClosed(self._error.code, self._error.reason)
        self._queue.append(data)
        self._size += len(data)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    if self._idle is not None and not self._idle.done():
                        self._idle.set_result(None)
                    self._wake = loop.create_future()
                    # Woken by the first put of an iteration; every later put of the same
                    # iteration lands in the queue before this task runs again.
                    await self._wake
                    continue
                parts, size = self._take()
                payload = parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"
                await self.channel.send(payload)
                self._size -= size
                if self._room is not None and not self._room.done() and self._size <= HIGH_WATER:
                    self._room.set_result(None)
        except ChannelClosed as exc:
            self._closed(exc)
        except Exception as exc:  # never leave senders waiting on a dead writer
            _log.exception("event=rpc_writer_failed")
            self._closed(ChannelClosed(1011, f"write failed: {exc!r}"))
            with contextlib.suppress(Exception):
                await self.channel.close(1011, "Internal error")

    def _take(self) -> tuple[list[bytes], int]:
        queue = self._queue
        if len(queue) <= MAX_MESSAGES and self._size <= MAX_BYTES:
            self._queue = []
            return queue, self._size
        count, size = 0, 0
        for part in queue:
            if count and (count >= MAX_MESSAGES or size + len(part) > MAX_BYTES):
                break
            count += 1
            size += len(part)
        self._queue = queue[count:]
        return queue[:count], size

    def _closed(self, exc: ChannelClosed) -> None:
        if self._error is None:
            self._error = exc
            self._queue = []
            for waiter in (self._room, self._idle):
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            self._on_closed(exc)

    async def flush(self) -> None:
        """Wait until everything queued is written (or the channel is closed)."""
        if not self.coalesce or self._writer is None:
            return
        while (self._queue or (self._wake is None or self._wake.done())) and self._error is None \
                and not self._writer.done():
            if self._idle is None or self._idle.done():
                self._idle = asyncio.get_running_loop().create_future()
            await self._idle

    def abort(self) -> None:
        """Stop the writer; what is still queued is dropped (call flush first to keep it)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
        if self._error is None:
            self._error = ChannelClosed(None, "closed")
            for waiter in (self._room, self._idle):
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
