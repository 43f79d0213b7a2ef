"""Bare WebSocket helpers for relay tests: the server is tested without the SDK in the way."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def ws_connect(uri: str, headers: dict[str, str] | None = None, **kwargs) -> connect:
    return connect(uri, additional_headers=headers, max_size=None, compression=None,
                   open_timeout=10, **kwargs)


async def refused(uri: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Open *uri*, expecting the upgrade to be refused; return (status, reason phrase)."""
    try:
        ws = await ws_connect(uri, headers)
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.reason_phrase
    await ws.close()
    raise AssertionError(f"upgrade to {uri} unexpectedly succeeded")


async def next_accept(control: ClientConnection) -> dict:
    """The next ``accept`` command on a control channel."""
    message = await asyncio.wait_for(control.recv(), 10)
    assert isinstance(message, str)
    return json.loads(message)["accept"]


async def echo(ws: ClientConnection) -> None:
    """Echo every message, keeping fragments; return when the peer closes."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            fragments = [f async for f in ws.recv_streaming()]
            await ws.send(_again(fragments) if len(fragments) > 1 else fragments[0])


async def _again(fragments: list) -> AsyncIterator:
    for f in fragments:
        yield f


class EchoListener:
    """A listener that accepts every sender and echoes on each rendezvous."""

    def __init__(self, control: ClientConnection, protocol: str | None = None) -> None:
        self.control = control
        self.accepts: list[dict] = []
        self.sockets: list[ClientConnection] = []
        self.protocol = protocol
        self._task = asyncio.create_task(self._run())
        self._tasks: set[asyncio.Task] = set()

    async def _run(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.control:
                accept = json.loads(message)["accept"]
                self.accepts.append(accept)
                task = asyncio.create_task(self._serve(accept))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve(self, accept: dict) -> None:
        offered = accept["connectHeaders"].get("Sec-WebSocket-Protocol")
        chosen = self.protocol or (offered.split(",")[0].strip() if offered else None)
        async with ws_connect(accept["address"], subprotocols=[chosen] if chosen else None) as ws:
            self.sockets.append(ws)
            await echo(ws)

    async def close(self) -> None:
        await self.control.close()
        self._task.cancel()
        for task in list(self._tasks):
            task.cancel()


async def opened(uri: str, headers: dict[str, str] | None = None, **kwargs) -> ClientConnection:
    """``ws_connect`` as a coroutine, for ``asyncio.create_task``."""
    return await ws_connect(uri, headers, **kwargs)
