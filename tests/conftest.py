"""Shared fixtures: a real relay on 127.0.0.1 with real sockets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyrelay.protocol.sas import build_token
from hyrelay.server.app import RelayServer
from hyrelay.server.config import RelayConfig


@dataclass
class RelayHandle:
    """A running in-process relay plus helpers to set it up for one test."""

    server: RelayServer

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self):
        return self.server.store

    @property
    def relay(self):
        return self.server.relay

    def create_hc(self, name: str, **kwargs) -> str:
        self.store.create_hc("hyrelay", name, **kwargs)
        self.relay.refresh()
        return name

    def create_rule(self, name: str, rights: tuple[str, ...], entity: str | None = None):
        rule = self.store.create_rule("hyrelay", entity, name, rights)
        self.relay.refresh()
        return rule

    def token(self, path: str, *, rule=None, ttl: float = 3600, key: str | None = None) -> str:
        rule = rule or self.server.root_rule
        return build_token(f"{self.ws}/$hc/{path}", rule.name, key or rule.primary_key, int(time.time() + ttl))

    def auth(self, path: str, **kwargs) -> dict[str, str]:
        return {"ServiceBusAuthorization": self.token(path, **kwargs)}


def make_config(tmp: Path, **overrides) -> RelayConfig:
    return RelayConfig(host="127.0.0.1", port=0, data_dir=tmp, log_level="DEBUG", **overrides)


@pytest.fixture
def relay_config() -> dict:
    """Override in a test module to change the relay's settings."""
    return {}


@pytest.fixture
async def relay(tmp_path: Path, relay_config: dict) -> AsyncIterator[RelayHandle]:
    server = RelayServer(make_config(tmp_path / "data", **relay_config))
    await server.start()
    try:
        yield RelayHandle(server)
    finally:
        await server.stop()


def pytest_asyncio_loop_factories(config, item):
    """Run every test on uvloop, the loop the relay runs on in production.

    It matters: uvloop keeps unsent write buffers by reference where asyncio copies them.
    """
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
