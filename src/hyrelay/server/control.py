"""Sockets a listener opens to the relay: its control channel and its HTTP request rendezvous.

Both carry JSON text commands and the binary bodies of HTTP responses, so they share one base.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol.errors import BadGateway, ProtocolViolation, RelayError, close_reason
from ..protocol.messages import (MAX_CONTROL_MESSAGE, ListenerMessage, MalformedResponse, RenewToken, decode_response,
                                 parse_listener_message, parse_response)
from .engine import WSFrame, WSListener, WSMsgType, WSTransport, send_close, send_frame
from .exchange import HttpExchange, ResponseRouter

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["ListenerSocket", "ControlChannel", "RequestRendezvous"]

_log = logging.getLogger("hyrelay.server")

#: A listener with more than this waiting in its socket gets no new senders or requests.
BACKLOG_LIMIT = 1 << 20


class ListenerSocket(WSListener):
    """Text commands (bounded, reassembled from fragments) and response bodies from a listener."""

    __slots__ = ("transport", "responses", "closed", "_text", "writable", "paused", "_drain_callbacks", "limit")

    def __init__(self, limit: int = 16 << 20) -> None:
        #: Largest frame accepted; a bigger one closes the socket with 1009 and a reason.
        self.limit = limit
        self.transport: WSTransport | None = None
        self.responses = ResponseRouter()
        self.closed = False
        self._text: bytearray | None = None
        self.writable: asyncio.Event | None = None
        #: True while the socket's write buffer is over its high-water mark.
        self.paused = False
        self._drain_callbacks: list[Callable[[], None]] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if frame.payload_size > self.limit:
            self.close(1009, close_reason(f"A frame of {frame.payload_size} bytes is larger than the "
                                          f"{self.limit} this relay accepts"))
            return
        if msg_type is WSMsgType.TEXT:
            if frame.fin:
                self._on_text(frame.get_payload_as_bytes())
            else:
                self._text = bytearray(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CONTINUATION and self._text is not None:
            self._text += frame.get_payload_as_memoryview()
            if len(self._text) > MAX_CONTROL_MESSAGE:
                self.close(1009, close_reason(f"Control messages are limited to {MAX_CONTROL_MESSAGE} bytes"))
            elif frame.fin:
                data, self._text = bytes(self._text), None
                self._on_text(data)
        elif msg_type in (WSMsgType.BINARY, WSMsgType.CONTINUATION):
            if self.responses.on_body_frame(frame.get_payload_as_bytes(), frame.fin, transport):
                return
            # hyco-https sends an empty binary message after a bodiless response: drain it.
            if frame.payload_size or not frame.fin:
                self.violation(ProtocolViolation("Unexpected binary message: no response body is pending"))
        elif msg_type is WSMsgType.CLOSE:
            self.closed = True
            send_close(transport, int(frame.get_close_code()) or 1000, "")
            transport.disconnect()

    def _on_text(self, data: bytes) -> None:
        if len(data) > MAX_CONTROL_MESSAGE:
            self.close(1009, close_reason(f"Control messages are limited to {MAX_CONTROL_MESSAGE} bytes"))
            return
        try:
            head = decode_response(data)
            if head is None:
                message = parse_listener_message(data.decode())
                if not isinstance(message, ListenerMessage) or message.name != "response":
                    self.on_command(message)
                    return
                head = parse_response(message.body)
            exchange = self.responses.on_response(head)
        except UnicodeDecodeError:
            self.close(1007, close_reason("Control message is not valid UTF-8"))
            return
        except MalformedResponse as err:
            self.responses.on_malformed(err)
            return
        except ProtocolViolation as err:
            self.violation(err)
            return
        self.on_response(exchange)

    def on_command(self, message: RenewToken | ListenerMessage) -> None:
        _log.debug("event=command_ignored command=%s", getattr(message, "name", "renewToken"))

    def on_response(self, exchange: HttpExchange | None) -> None:
        pass

    def violation(self, err: RelayError) -> None:
        _log.info("event=listener_protocol_violation tracking_id=%s reason=%r", err.tracking_id, err.message)
        self.close(err.close_code, err.close_reason())

    def send_text(self, text: str | bytes) -> bool:
        """Send one command (bytes: already UTF-8); False if the socket is already gone."""
        if self.closed or self.transport is None or self.transport.is_disconnected:
            return False
        send_frame(self.transport, WSMsgType.TEXT, text.encode() if isinstance(text, str) else text)
        return True

    def send_binary(self, data: bytes, *, first: bool, fin: bool) -> bool:
        """Send one fragment of a binary message."""
        if self.closed or self.transport is None or self.transport.is_disconnected:
            return False
        send_frame(self.transport, WSMsgType.BINARY if first else WSMsgType.CONTINUATION, data, fin)
        return True

    def close(self, code: int, reason: str) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            send_close(self.transport, code, reason)
            self.transport.disconnect()

    # Writers that stream (request bodies) wait on this; it is only created when someone does.
    def pause_writing(self) -> None:
        self.paused = True
        if self.writable is None:
            self.writable = asyncio.Event()
        self.writable.clear()

    def resume_writing(self) -> None:
        self.paused = False
        if self.writable is not None:
            self.writable.set()
        callbacks, self._drain_callbacks = self._drain_callbacks, None
        for callback in callbacks or ():
            callback()

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call *callback* once, when the write buffer next drains below its low-water mark."""
        if self._drain_callbacks is None:
            self._drain_callbacks = []
        self._drain_callbacks.append(callback)

    @property
    def backed_up(self) -> bool:
        """True if the listener is so far behind that it should not be given more work now."""
        # Only a paused socket (its buffer went over the high-water mark) can be this far behind:
        # asked per request, so the buffer is measured only then.
        return self.paused and self.buffered > BACKLOG_LIMIT

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the socket."""
        if self.transport is None or self.transport.is_disconnected:
            return 0
        return self.transport.underlying_transport.get_write_buffer_size()

    async def drained(self) -> None:
        if self.writable is not None:
            await self.writable.wait()


class ControlChannel(ListenerSocket):
    """One online listener."""

    __slots__ = ("relay", "hc_key", "hc_name", "listener_id", "peer", "since", "base_url", "_expiry")

    def __init__(self, relay: "Relay", hc_key: str, hc_name: str, listener_id: str,
                 peer: tuple[str, int], base_url: str, limit: int = 16 << 20) -> None:
        super().__init__(limit)
        self.relay = relay
        self.hc_key = hc_key
        self.hc_name = hc_name
        self.listener_id = listener_id
        self.peer = peer
        self.since = time.time()
        self.base_url = base_url
        self._expiry: asyncio.TimerHandle | None = None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.resume_writing()  # nobody should wait for a socket that is gone
        if self._expiry is not None:
            self._expiry.cancel()
        self.responses.fail_all(BadGateway("The listener disconnected before it finished the response"))
        self.relay.listener_gone(self)

    def on_command(self, message: RenewToken | ListenerMessage) -> None:
        if isinstance(message, RenewToken):
            self.relay.renew_token(self, message.token)
        else:
            super().on_command(message)

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


class RequestRendezvous(ListenerSocket):
    """A listener's socket for one HTTP request: the request may go out on it, the response comes back.

    The relay closes it once the response is complete and never routes another request over it
    (hyco-https never reads from a rendezvous it opened for a response, spec §11.4).
    """

    __slots__ = ("exchange",)

    def __init__(self, exchange: HttpExchange, limit: int = 16 << 20) -> None:
        super().__init__(limit)
        self.exchange = exchange
        self.responses.exchanges[exchange.id] = exchange

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        super().on_ws_frame(transport, frame)
        if self.exchange.body_complete and self.exchange.head_seen and not self.closed:
            self.close(1000, "")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.resume_writing()  # wake a blocked writer so it sees the socket is gone
        self.responses.fail_all(BadGateway("The listener dropped the request rendezvous before it finished"))
