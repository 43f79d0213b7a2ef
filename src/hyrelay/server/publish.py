"""WebSocket publishers on a multicast hybrid connection: every message goes to all listeners.

Each message arrives at every listener online as an inline ``request`` (POST, body = the
message), exactly like an HTTP publish, and the publisher gets one text acknowledgement per
message: ``{"published":{"seq":N,"listeners":K}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..protocol.errors import RequestTooLarge
from ..protocol.messages import MAX_INLINE_REQUEST
from .control import ControlChannel
from .engine import WSFrame, WSListener, WSMsgType, WSTransport, send_close
from .httprelay import fan_out

__all__ = ["Publisher"]


class Publisher(WSListener):
    """The relay's end of one publisher's socket."""

    __slots__ = ("listeners", "raw_path", "target", "peer", "transport", "_parts", "_type", "_seq",
                 "on_published")

    def __init__(self, listeners: Callable[[], list[ControlChannel]], raw_path: str, target: str,
                 peer: tuple[str, int], on_published: Callable[[int, int], None]) -> None:
        self.listeners = listeners
        self.raw_path = raw_path
        self.target = target
        self.peer = peer
        self.on_published = on_published
        self.transport: WSTransport | None = None
        self._parts: list[bytes] = []
        self._type = WSMsgType.BINARY
        self._seq = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self._type, self._parts = msg_type, [frame.get_payload_as_bytes()]
        elif msg_type is WSMsgType.CONTINUATION:
            self._parts.append(frame.get_payload_as_bytes())
        elif msg_type is WSMsgType.CLOSE:
            send_close(transport, int(frame.get_close_code()) or 1000, "")
            transport.disconnect()
            return
        else:
            return
        if sum(len(p) for p in self._parts) > MAX_INLINE_REQUEST:
            err = RequestTooLarge(f"Multicast messages are limited to {MAX_INLINE_REQUEST} bytes")
            send_close(transport, 1009, err.close_reason())
            transport.disconnect()
            return
        if frame.fin:
            body, self._parts = b"".join(self._parts), []
            kind = "text/plain; charset=utf-8" if self._type is WSMsgType.TEXT else "application/octet-stream"
            reached = fan_out(self.listeners(), self.raw_path, self.target, "POST",
                              {"Content-Type": kind}, self.peer, body)
            self._seq += 1
            transport.send(WSMsgType.TEXT, json.dumps(
                {"published": {"seq": self._seq, "listeners": reached}}).encode())
            self.on_published(reached, len(body))
            self._hold_while_backed_up()

    def _hold_while_backed_up(self) -> None:
        """Stop reading the publisher while any listener's socket is full: backpressure, not loss."""
        backed_up = [channel for channel in self.listeners() if channel.paused]
        if not backed_up or self.transport is None or self.transport.is_disconnected:
            return
        self.transport.underlying_transport.pause_reading()
        waiting = len(backed_up)

        def drained() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0 and self.transport is not None and not self.transport.is_disconnected:
                self.transport.underlying_transport.resume_reading()
                self._hold_while_backed_up()

        for channel in backed_up:
            channel.on_drain(drained)


