"""Sending frames with picows safely; shared by the relay's engine and the SDK's control channel."""

from __future__ import annotations

import asyncio
from typing import Any

from picows import WSCloseCode, WSMsgType, WSTransport

__all__ = ["CoalescingTransport", "send_frame", "send_close"]


#: picows copies payloads up to this size into its own buffer before writing them.
_COPIED_BY_PICOWS = 8192
#: Room picows needs in front of a payload for the largest frame header.
_HEADROOM = 14


def send_frame(transport: WSTransport, msg_type: WSMsgType, payload: bytes | memoryview, fin: bool = True) -> None:
    """Send one frame safely, whatever the payload's size and lifetime.

    For payloads over 8 KiB picows' ``send()`` hands uvloop a view of its own reused header
    buffer (and the caller's payload) without copying, and uvloop keeps unsent buffers by
    reference: frames sent later would overwrite them. So large frames are built in a buffer of
    their own, which picows writes directly and copies only if the socket cannot take it all.
    """
    if len(payload) <= _COPIED_BY_PICOWS:
        transport.send(msg_type, payload, fin)
        return
    frame = bytearray(_HEADROOM)
    frame += payload
    transport.send_reuse_external_bytearray(msg_type, frame, _HEADROOM, fin)


def send_close(transport: WSTransport, code: int, reason: str) -> None:
    """Send a Close frame; the reason is cut to the 123 bytes a close frame allows."""
    data = reason.encode()[:123]
    transport.send_close(WSCloseCode(code), data)


class CoalescingTransport:
    """A transport in front of a socket's that gathers what one loop iteration writes into one write.

    picows writes every frame with a system call of its own. A control channel carries many small
    frames (a request's text and its body; under load, many requests per iteration), so these go
    out together, with one system call, once the iteration's callbacks have run. Only for sockets
    of small messages: large frames would be copied once more on their way through.
    """

    __slots__ = ("_transport", "_loop", "_pending", "_size")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        # Copied unless already bytes: picows passes views of buffers it reuses for the next frame.
        self._pending.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)

    def writelines(self, items: list[bytes | bytearray | memoryview]) -> None:
        for data in items:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending, self._size = self._pending, [], 0
        if pending and not self._transport.is_closing():
            self._transport.writelines(pending)

    def get_write_buffer_size(self) -> int:
        # Never 0: picows would then send() on the socket directly, around what waits here.
        return self._transport.get_write_buffer_size() + self._size + 1

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
