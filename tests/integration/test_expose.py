"""`hyrelay expose`: a real `hyrelay serve` process, a real `hyrelay expose` process, real HTTP.

Timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

GUARD = 30.0
HC = "web"
CS_MARK = "connection string: "


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HYRELAY_")}


async def first_line(proc: asyncio.subprocess.Process, what: str) -> str:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), GUARD)
    except TimeoutError:
        pytest.fail(f"{what} printed nothing within {GUARD} s")
    if not line:
        pytest.fail(f"{what} exited (rc={await proc.wait()}) without printing its line")
    return line.decode().rstrip("\n")


async def stop(proc: asyncio.subprocess.Process, signum: int = signal.SIGTERM) -> int:
    if proc.returncode is None:
        proc.send_signal(signum)
    try:
        return await asyncio.wait_for(proc.wait(), GUARD)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the process did not stop on its signal")


async def start(*args: str, cwd: Path | None = None, log: Path) -> asyncio.subprocess.Process:
    stderr = log.open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hyrelay", *args, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            env=clean_env(), cwd=cwd)
    finally:
        stderr.close()  # the child holds its own descriptor


@dataclass
class RelayProcess:
    proc: asyncio.subprocess.Process
    connection_string: str


@pytest.fixture
async def relay_process(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    data = tmp_path / "relay-data"
    # The HC exists before the relay starts, so a listener can never race the relay's reload.
    made = subprocess.run([sys.executable, "-m", "hyrelay", "hc", "create", HC, "--no-client-auth",
                           "--data-dir", str(data)], capture_output=True, text=True, env=clean_env(),
                          timeout=GUARD)
    assert made.returncode == 0, made.stderr
    proc = await start("serve", "--port", "0", "--data-dir", str(data), log=tmp_path / "serve.log")
    try:
        line = await first_line(proc, "hyrelay serve")
        assert CS_MARK in line, line
        yield RelayProcess(proc, line.split(CS_MARK, 1)[1].strip())
        assert await stop(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def local_app() -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"local app: {request.path}?{request.query_string} "
                                 f"prefix={request.headers.get('X-Forwarded-Prefix')}")

    app = web.Application()
    app.add_routes([web.get("/{tail:.*}", hello)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


URL_RE = re.compile(r"^http://127\.0\.0\.1:\d+/web/$")


async def test_expose_forwards_to_a_local_service(relay_process: RelayProcess, local_app: str,
                                                  tmp_path: Path) -> None:
    expose = await start("expose", "--to", local_app, relay_process.connection_string, "--hc", HC,
                         "--listeners", "2", log=tmp_path / "expose.log")
    try:
        url = await first_line(expose, "hyrelay expose")
        assert URL_RE.match(url), url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GUARD)) as http:
            for i in range(4):
                async with http.get(f"{url}api/thing?i={i}") as resp:
                    assert resp.status == 200
                    assert await resp.text() == f"local app: /api/thing?i={i} prefix=/{HC}"
        assert await stop(expose) == 0
    finally:
        if expose.returncode is None:
            expose.kill()
            await expose.wait()


async def test_expose_serves_an_asgi_app_from_the_working_directory(relay_process: RelayProcess,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "exposed_app.py").write_text('''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = f"asgi {scope['method']} {scope['path']} root={scope['root_path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
''')
    env_cs = relay_process.connection_string
    expose = await start("expose", "exposed_app:app", "--connection-string", env_cs, "--hc", HC,
                         cwd=tmp_path, log=tmp_path / "expose.log")
    try:
        url = await first_line(expose, "hyrelay expose")
        assert URL_RE.match(url), url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GUARD)) as http:
            async with http.get(f"{url}x/y") as resp:
                assert resp.status == 200
                assert await resp.text() == f"asgi GET /{HC}/x/y root=/{HC}"
        assert await stop(expose, signal.SIGINT) == 0
    finally:
        if expose.returncode is None:
            expose.kill()
            await expose.wait()


async def test_expose_without_a_target_is_a_usage_error(tmp_path: Path) -> None:
    proc = await start("expose", "Endpoint=http://127.0.0.1:1/;SharedAccessKeyName=a;SharedAccessKey=b",
                       "--hc", HC, log=tmp_path / "expose.log")
    assert await asyncio.wait_for(proc.wait(), GUARD) == 2
    assert "give either --to URL" in (tmp_path / "expose.log").read_text()


async def test_expose_fails_clearly_when_the_relay_is_unreachable(tmp_path: Path, local_app: str) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    proc = await start("expose", "--to", local_app, "--hc", HC,
                       f"Endpoint=http://127.0.0.1:{port}/;SharedAccessKeyName=a;SharedAccessKey=b",
                       log=tmp_path / "expose.log")
    assert await asyncio.wait_for(proc.wait(), GUARD) == 1
    assert "cannot reach the relay" in (tmp_path / "expose.log").read_text()
