"""Sending frames with picows safely; shared by the relay's engine and the SDK's control channel."""

from __future__ import annotations

from picows import WSCloseCode, WSMsgType, WSTransport

__all__ = ["send_frame", "send_close"]


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
