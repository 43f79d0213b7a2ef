"""Wiring: one port, one store, one relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from urllib.parse import urlsplit

from aiohttp import web

from ..protocol.errors import close_reason
from ..protocol.sas import ConnectionString
from ..store import Rule, Store, open_store
from .config import RelayConfig
from .dispatch import Dispatch
from .http import make_app
from .relay import Relay

__all__ = ["RelayServer"]

_log = logging.getLogger("hyrelay.server")


class RelayServer:
    """A running relay. ``async with RelayServer(config) as server: ...``"""

    def __init__(self, config: RelayConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store
        self.relay: Relay | None = None
        self.root_rule: Rule | None = None
        self.port = config.port
        self._server: asyncio.base_events.Server | None = None
        self._runner: web.AppRunner | None = None
        self._reload: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        if self.store is None:
            self.store = open_store(config.data_dir)
        _, self.root_rule = self.store.ensure_default(config.namespace)
        relay = self.relay = Relay(config, self.store)
        self._runner = web.AppRunner(make_app(relay), access_log=None, handle_signals=False,
                                    max_line_size=16384, max_field_size=16384)
        await self._runner.setup()
        http_factory = self._runner.server
        context = None
        if config.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(config.tls_cert), str(config.tls_key) if config.tls_key else None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Dispatch(relay, http_factory, config.max_header_size),  # type: ignore[arg-type]
            config.host, config.port, ssl=context, backlog=2048, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._reload = asyncio.create_task(self._reload_loop())
        _log.info("event=relay_started address=%s", self.base_url)

    async def _reload_loop(self) -> None:
        assert self.relay is not None
        while True:
            await asyncio.sleep(self.config.reload_interval)
            try:
                self.relay.refresh()
            except Exception:
                _log.exception("event=reload_failed")

    @property
    def base_url(self) -> str:
        """``http(s)://host:port`` of this relay as clients should reach it."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.config.secure else 'http'}://{host}:{self.port}"

    def connection_string(self, rule: Rule | None = None, entity: str | None = None) -> str:
        """A ready-to-paste connection string (``sb://`` means TLS, ``http://`` a plain relay)."""
        rule = rule or self.root_rule
        assert rule is not None
        parts = urlsplit(self.base_url)
        scheme = "sb" if parts.scheme == "https" else "http"
        return str(ConnectionString(f"{scheme}://{parts.netloc}/", rule.name, rule.primary_key, entity))

    async def stop(self) -> None:
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload
        if self._server is not None:
            self._server.close()
        if self.relay is not None:
            reason = close_reason("The relay is shutting down")
            for key in list(self.relay.router.hc_keys()):
                for channel in self.relay.router.listeners(key):
                    channel.close(1001, reason)
            for conn in list(self.relay.http.connections):
                conn.transport.close()  # type: ignore[attr-defined]
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> "RelayServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
