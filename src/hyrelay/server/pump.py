"""The data phase: frames relayed between a sender and a listener's rendezvous socket.

Frames go through as they arrive, FIN bits kept, so a fragmented message streams and nothing
buffers a whole message. A Close frame is forwarded as it came (code and reason intact) and the
other direction keeps flowing until the peer's Close arrives, which keeps half-close working.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..protocol.errors import close_reason
from .engine import WSFrame, WSListener, WSMsgType, WSTransport, send_close, send_frame

__all__ = ["PumpEnd", "pair"]

_log = logging.getLogger("hyrelay.server")

#: Seconds to wait for the peer's Close after forwarding one, before cutting both sockets.
CLOSE_TIMEOUT = 10.0

_DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)


class PumpEnd(WSListener):
    """One side of a relayed connection; ``peer`` is the other side."""

    __slots__ = ("role", "peer", "transport", "close_received", "gone", "on_finished", "_timer", "nbytes",
                 "limit", "closing", "active", "_parked")

    def __init__(self, role: str, limit: int) -> None:
        self.role = role
        self.peer: PumpEnd | None = None
        self.transport: WSTransport | None = None
        self.close_received = False
        self.gone = False
        self.on_finished: Callable[[PumpEnd], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Payload bytes received on this end (BytesTransferred).
        self.nbytes = 0
        #: Largest frame relayed; a bigger one ends the connection with 1009.
        self.limit = limit
        #: Set once either side sent Close; ``active`` then records that data still flows.
        self.closing = False
        self.active = False
        #: Frames that came before the peer's socket was ready (early data in a handshake).
        self._parked: list[tuple[WSMsgType, bytes, bool]] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        peer = self.peer
        if peer is not None and peer._parked:
            parked, peer._parked = peer._parked, None
            for msg_type, data, fin in parked:
                send_frame(transport, msg_type, data, fin)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        peer = self.peer
        if msg_type in _DATA:
            size = frame.payload_size
            if size > self.limit:
                self._too_big(size)
                return
            self.nbytes += size
            if self.closing:
                self.active = True
            if peer is None or peer.gone:
                return
            if peer.transport is None:  # early data: the peer's 101 is being sent right now
                if self._parked is None:
                    self._parked = []
                self._parked.append((msg_type, frame.get_payload_as_bytes(), frame.fin))
                return
            # The view points into picows' read buffer; send_frame copies what must outlive it.
            send_frame(peer.transport, msg_type, frame.get_payload_as_memoryview(), frame.fin)
        elif msg_type is WSMsgType.CLOSE:
            self._on_close(frame)

    def _too_big(self, size: int) -> None:
        reason = close_reason(f"A frame of {size} bytes is larger than the {self.limit} this relay accepts")
        for end in (self, self.peer):
            if end is not None and end.transport is not None and not end.gone:
                end.close_received = True  # no Close exchange to wait for: both sides are told why
                send_close(end.transport, 1009, reason)
                end.transport.disconnect()

    def _on_close(self, frame: WSFrame) -> None:
        if self.close_received:
            return
        self.close_received = True
        peer = self.peer
        if peer is None or peer.gone or peer.transport is None:
            self.transport.send(WSMsgType.CLOSE, frame.get_payload_as_memoryview())  # type: ignore[union-attr]
            self.transport.disconnect()  # type: ignore[union-attr]
            return
        payload = frame.get_payload_as_memoryview()
        if len(payload) >= 2 and not _sendable(int.from_bytes(payload[:2], "big")):
            # 1005, 1006, 1015 and unassigned codes must never go on the wire (RFC 6455 §7.4).
            send_close(peer.transport, 1002, close_reason(f"The {self.role} sent an invalid close code"))
        else:
            peer.transport.send(WSMsgType.CLOSE, payload)
        if peer.close_received:
            self.transport.disconnect()  # type: ignore[union-attr]
            peer.transport.disconnect()
        else:
            # Half-close: the other direction keeps flowing until the peer's Close, for as long as
            # data moves; only a connection idle for CLOSE_TIMEOUT is cut.
            self.closing = peer.closing = True
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_timeout)

    def _close_timeout(self) -> None:
        peer = self.peer
        if peer is not None and (peer.active or self.active) and not peer.gone and not self.gone:
            peer.active = self.active = False
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_timeout)
            return
        for end in (self, peer):
            if end is not None and end.transport is not None and not end.gone:
                end.transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        if self._timer is not None:
            self._timer.cancel()
        peer = self.peer
        if peer is not None and not peer.gone and peer.transport is not None:
            if not self.close_received:
                # Abrupt drop (no Close): tell the other side promptly instead of leaving it hanging.
                reason = close_reason(f"The {self.role} disconnected abruptly")
                send_close(peer.transport, 1001, reason)
            peer.transport.disconnect()
        if self.on_finished is not None:
            self.on_finished(self)

    def pause_writing(self) -> None:
        # Our socket is full: stop reading from the peer until it drains.
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.gone:
            self.peer.transport.underlying_transport.resume_reading()


def _sendable(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


def pair(limit: int) -> tuple[PumpEnd, PumpEnd]:
    """A linked (sender end, listener end) pair, before either socket is adopted."""
    sender, listener = PumpEnd("sender", limit), PumpEnd("listener", limit)
    sender.peer, listener.peer = listener, sender
    return sender, listener
