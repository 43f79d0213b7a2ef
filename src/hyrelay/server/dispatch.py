"""The protocol every accepted TCP connection starts with.

It reads the first request head, then either hands the connection to the relay (``/$hc/``
WebSocket upgrades) or to the HTTP application (everything else: health, and later the HTTP relay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol.addresses import HcTarget, parse_hc_target
from ..protocol.errors import BadRequest, HeadersTooLarge, RelayError, RequestTimeout
from . import engine
from .handshake import Head, error_response, parse_head, utc_timestamp
from .httpconn import HttpConnection

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["Dispatch", "Upgrade"]

_log = logging.getLogger("hyrelay.server")


class Upgrade:
    """A ``$hc`` WebSocket upgrade the relay has not answered yet."""

    __slots__ = ("_dispatch", "head", "target", "peer", "on_lost", "done")

    def __init__(self, dispatch: "Dispatch", head: Head, target: HcTarget) -> None:
        self._dispatch = dispatch
        self.head = head
        self.target = target
        peer = dispatch.transport.get_extra_info("peername") or ("", 0)
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1]))
        self.on_lost: Callable[[], None] | None = None
        self.done = False

    @property
    def secure(self) -> bool:
        return self._dispatch.transport.get_extra_info("sslcontext") is not None

    def reject(self, err: RelayError, tracker: str = "") -> None:
        """Answer with the error's status and an Azure-style reason phrase, then close."""
        if self.done:
            return
        self.done = True
        reason = err.reason(tracker, utc_timestamp())
        _log.info("event=upgrade_rejected status=%s tracking_id=%s peer=%s:%s reason=%r",
                  err.status, err.tracking_id, *self.peer, reason)
        transport = self._dispatch.transport
        if not transport.is_closing():
            transport.write(error_response(err, reason))
            transport.close()

    def reject_raw(self, status: int, reason: str, err: RelayError) -> None:
        """Answer with a status and reason chosen by a listener (a reject passthrough)."""
        self.done = True
        transport = self._dispatch.transport
        if not transport.is_closing():
            transport.write(error_response(err, reason, status))
            transport.close()

    def accept(self, listener: engine.WSListener, headers: dict[str, str] | None = None,
               ping_interval: float | None = None, max_frame_size: int = 16 << 20, coalesce: bool = False) -> bool:
        """Send 101 and hand the socket to *listener*; False if the client has gone."""
        if self.done:
            return False
        self.done = True
        transport = self._dispatch.transport
        if transport.is_closing():
            return False
        dispatch = self._dispatch
        engine.adopt(transport, dispatch.buf, listener, headers,
                     max_frame_size=max_frame_size, ping_interval=ping_interval, coalesce=coalesce)
        # uvloop's transport keeps the first protocol alive after set_protocol(); let go of the
        # handshake (headers with the token, the parsed target) so an idle connection holds none of it.
        dispatch.buf = b""
        dispatch.upgrade = None
        self.on_lost = None
        return True


class Dispatch(asyncio.Protocol):
    """Reads one request head and routes the connection."""

    __slots__ = ("relay", "http_factory", "max_head", "transport", "buf", "upgrade", "_timer")

    def __init__(self, relay: "Relay", http_factory: Callable[[], asyncio.Protocol], max_head: int) -> None:
        self.relay = relay
        self.http_factory = http_factory
        self.max_head = max_head
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = b""
        self.upgrade: Upgrade | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(self.relay.config.head_timeout, self._too_slow)

    def _too_slow(self) -> None:
        # A client that never finishes its request head would hold the connection forever.
        self._timer = None
        if self.upgrade is None and not self.transport.is_closing():
            self._fail(RequestTimeout(f"The request head did not arrive within "
                                      f"{self.relay.config.head_timeout:g} seconds"))

    def _head_done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        self.buf = buf
        if self.upgrade is not None:
            # A WebSocket client may not send before our 101; bound what an early one can park here.
            if len(buf) > 2 * self.max_head:
                self.transport.abort()
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self.max_head:
            if len(buf) > self.max_head:
                self._fail(HeadersTooLarge(f"The request head is larger than {self.max_head} bytes"))
            return
        self._head_done()
        try:
            head = parse_head(buf[: end + 4])
        except ValueError as exc:
            self._fail(BadRequest(f"Malformed HTTP request: {exc}"))
            return
        target = parse_hc_target(head.target)
        if target is None:
            self._to_http(buf, head.target)
        elif not head.is_websocket or head.method != "GET":
            self._fail(BadRequest("The $hc endpoint accepts only WebSocket upgrades (GET with Upgrade: websocket)"))
        else:
            self.upgrade = Upgrade(self, head, target)
            self.relay.on_upgrade(self.upgrade)

    def _fail(self, err: RelayError) -> None:
        self.transport.write(error_response(err, err.reason(timestamp=utc_timestamp())))
        self.transport.close()
        self.buf = b""

    def _to_http(self, buf: bytes, target: str) -> None:
        # Relayed paths go to the relay's own HTTP server; the relay's /$ endpoints to aiohttp.
        proto = (self.http_factory() if target.startswith("/$")
                 else HttpConnection(self.relay, self.http_factory, self.max_head))
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(buf)
        self.buf = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        upgrade = self.upgrade
        if upgrade is not None and not upgrade.done:
            upgrade.done = True
            if upgrade.on_lost is not None:
                upgrade.on_lost()
