"""A thin adapter over the WebSocket engine (picows), so the rest of the server never names it.

The relay parses and authorizes every upgrade itself, possibly waiting for a listener, and only
then hands the connection to the engine with the 101 headers it decided on. picows has no public
API to adopt an accepted transport, so the protocol class is built directly: picows is pinned.
"""

from __future__ import annotations

import asyncio
import logging

from picows import (WSAutoPingStrategy, WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport,
                    WSUpgradeResponse, WSUpgradeResponseWithListener)
from picows.picows import WSProtocol

from .._picows import CoalescingTransport, send_close, send_frame

__all__ = ["adopt", "WSFrame", "WSListener", "WSMsgType", "WSTransport", "WSCloseCode", "send_close",
           "send_frame"]

_log = logging.getLogger("hyrelay.engine")

#: picows allocates this much per connection up front; 2048 is its minimum and costs no speed.
READ_BUFFER = 2048


def adopt(transport: asyncio.Transport, head: bytes, listener: WSListener,
          headers: dict[str, str] | None = None, *, max_frame_size: int = 16 << 20,
          ping_interval: float | None = None, coalesce: bool = False) -> None:
    """Complete the upgrade in *head* on *transport* with a 101 carrying *headers*.

    *listener* receives the frames. With *ping_interval*, an idle peer is pinged and dropped
    if it does not answer within the same interval. Frames over *max_frame_size* are for the
    listener to refuse with a reason; picows itself only drops frames far larger than that.
    With *coalesce*, what one event-loop iteration writes goes out in one system call (for
    control channels, which carry many small frames).
    """
    response = WSUpgradeResponse.create_101_response(headers)

    def factory(_request: object) -> WSUpgradeResponseWithListener:
        return WSUpgradeResponseWithListener(response, listener)

    proto = WSProtocol(
        None, None, False, factory, _log, True, None,
        ping_interval is not None, ping_interval or 20.0, ping_interval or 20.0,
        WSAutoPingStrategy.PING_WHEN_IDLE, True, max_frame_size + max(max_frame_size, 1 << 20), None, READ_BUFFER,
    )
    transport.set_protocol(proto)
    proto.connection_made(CoalescingTransport(transport, asyncio.get_running_loop()) if coalesce else transport)
    view = memoryview(head)
    while view:
        buf = proto.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]
