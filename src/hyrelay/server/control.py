"""A listener's control channel: the relay sends ``accept``; the listener may send ``renewToken``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..protocol.errors import ProtocolViolation, RelayError, close_reason
from ..protocol.messages import MAX_CONTROL_MESSAGE, RenewToken, parse_listener_message
from .engine import WSFrame, WSListener, WSMsgType, WSTransport, send_close

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["ControlChannel"]

_log = logging.getLogger("hyrelay.server")


class ControlChannel(WSListener):
    """One online listener."""

    __slots__ = ("relay", "hc_key", "hc_name", "listener_id", "peer", "since", "base_url",
                 "transport", "_expiry", "_text", "closed")

    def __init__(self, relay: "Relay", hc_key: str, hc_name: str, listener_id: str,
                 peer: tuple[str, int], base_url: str) -> None:
        self.relay = relay
        self.hc_key = hc_key
        self.hc_name = hc_name
        self.listener_id = listener_id
        self.peer = peer
        self.since = time.time()
        self.base_url = base_url
        self.transport: WSTransport | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._text: bytearray | None = None
        self.closed = False

    # -- engine callbacks -------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT:
            if frame.fin:
                self._on_text(frame.get_payload_as_bytes())
            else:
                self._text = bytearray(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CONTINUATION and self._text is not None:
            self._text += frame.get_payload_as_memoryview()
            if len(self._text) > MAX_CONTROL_MESSAGE:
                self.close(1009, close_reason(f"Control channel messages are limited to {MAX_CONTROL_MESSAGE} bytes"))
            elif frame.fin:
                data, self._text = bytes(self._text), None
                self._on_text(data)
        elif msg_type in (WSMsgType.BINARY, WSMsgType.CONTINUATION):
            # hyco-https sends an empty binary message after a bodiless response: drain it.
            if frame.payload_size or not frame.fin:
                self._violation(ProtocolViolation(
                    "Unexpected binary message on the control channel"))
        elif msg_type is WSMsgType.CLOSE:
            send_close(transport, int(frame.get_close_code()) or 1000, "")
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self.relay.listener_gone(self)

    # -- relay side -----------------------------------------------------------------------------
    def _on_text(self, data: bytes) -> None:
        if len(data) > MAX_CONTROL_MESSAGE:
            self.close(1009, close_reason(f"Control channel messages are limited to {MAX_CONTROL_MESSAGE} bytes"))
            return
        try:
            message = parse_listener_message(data.decode())
        except UnicodeDecodeError:
            self.close(1007, close_reason("Control channel message is not valid UTF-8"))
            return
        except ProtocolViolation as err:
            self._violation(err)
            return
        if isinstance(message, RenewToken):
            self.relay.renew_token(self, message.token)
        else:
            _log.debug("event=control_ignored command=%s listener=%s", message.name, self.listener_id)

    def _violation(self, err: RelayError) -> None:
        _log.info("event=control_violation hc=%s listener=%s tracking_id=%s reason=%r",
                  self.hc_name, self.listener_id, err.tracking_id, err.message)
        self.close(err.close_code, err.close_reason())

    def send_text(self, text: str) -> bool:
        """Send one control message; False if the channel is already gone."""
        if self.closed or self.transport is None or self.transport.is_disconnected:
            return False
        self.transport.send(WSMsgType.TEXT, text.encode())
        return True

    def close(self, code: int, reason: str) -> None:
        """Close the channel with *code*; the listener will reconnect as it sees fit."""
        if self.transport is not None and not self.closed:
            self.closed = True
            send_close(self.transport, code, reason)
            self.transport.disconnect()

    def expire_at(self, wall_time: float) -> None:
        """Close with 1008 at *wall_time* unless the token is renewed first."""
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(max(0.0, wall_time - time.time()), self._expired)

    def _expired(self) -> None:
        _log.info("event=listener_token_expired hc=%s listener=%s", self.hc_name, self.listener_id)
        self.close(1008, close_reason(
            "The security token has expired, therefore the authorization policy is violated"))
