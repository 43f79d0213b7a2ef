"""Serving processes for http_bench.py: the origin app and an SDK listener with its own handler.

    python bench/http_servers.py app
    python bench/http_servers.py listener CONNECTION_STRING --hc NAME [--listeners N] [--to URL]
    python bench/http_servers.py relay
    ... [--profile FILE]

Each prints one JSON line ``{"pid": ..., "port": ...}`` once it serves (the listener once every
control channel is online; the relay adds its connection string ``cs``), then serves until
SIGTERM/SIGINT. All run on uvloop, as ``hyrelay serve`` and ``hyrelay expose`` do. --profile
writes cProfile stats measured in CPU time (time.process_time), not wall time: on a core shared
with the other hops, a wall-clock profile charges the time a process sat preempted to whatever
call it was in (typically a socket write that woke the next hop).

Routes, the same in both (the relayed ones behind ``/{hc}``):

* ``GET /hello``          a 14-byte text answer;
* ``POST /upload``        reads the whole body (4 KiB in the benchmark), answers ``received N bytes``;
* ``POST /sink``          reads a streamed body chunk by chunk and discards it, answers the count;
* ``GET /blob?bytes=N``   streams N bytes (64 KiB writes of one preallocated buffer).

* app:      an aiohttp web application, what nginx and hyrelay's ProxyHandler (``hyrelay
            expose --to``) forward to, and what "direct" measures.
* listener: ``HybridConnectionListener(request_handler=...)`` answering the routes in the
            listener itself: no origin behind it (the "in-listener handler" rows, and the
            1 GiB streams). With ``--to URL``: ``ProxyHandler(URL)`` instead, which is what
            ``hyrelay expose --to URL`` runs.
* relay:    ``RelayServer`` (what ``hyrelay serve`` runs) on a temporary data dir, with hybrid
            connections ``proxy`` and ``native`` that need no sender token. The benchmark itself
            runs ``python -m hyrelay serve``; this runner exists for --profile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _servers import announce, raise_nofile, run_profiled, wait_for_signal

HELLO = b"Hello, world!\n"
CHUNK = 64 * 1024
BLOCK = bytes(range(256)) * (CHUNK // 256)


# -- the origin app ---------------------------------------------------------------------------
async def run_app(args: argparse.Namespace) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=HELLO, content_type="text/plain")

    async def upload(request: web.Request) -> web.Response:
        data = await request.read()
        return web.Response(body=b"received %d bytes\n" % len(data), content_type="text/plain")

    async def sink(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        return web.Response(body=b"%d\n" % n, content_type="text/plain")

    async def blob(request: web.Request) -> web.StreamResponse:
        left = int(request.query["bytes"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = left
        await response.prepare(request)
        while left > 0:
            piece = BLOCK if left >= CHUNK else BLOCK[:left]
            await response.write(piece)
            left -= len(piece)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/hello", hello)
    app.router.add_post("/upload", upload)
    app.router.add_post("/sink", sink)
    app.router.add_get("/blob", blob)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048, reuse_address=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    announce({"port": port})
    await wait_for_signal()
    await runner.cleanup()


# -- the SDK listener with its own handler ------------------------------------------------------
async def handler(request, response) -> None:  # type: ignore[no-untyped-def]
    path = request.path
    if path == "/hello":
        response.headers["Content-Type"] = "text/plain"
        await response.end(HELLO)
    elif path == "/upload":
        data = await request.read()
        response.headers["Content-Type"] = "text/plain"
        await response.end(b"received %d bytes\n" % len(data))
    elif path == "/sink":
        n = 0
        async for chunk in request.body:
            n += len(chunk)
        response.headers["Content-Type"] = "text/plain"
        await response.end(b"%d\n" % n)
    elif path == "/blob":
        left = int(request.query_params["bytes"])
        response.headers["Content-Type"] = "application/octet-stream"
        while left > 0:
            piece = BLOCK if left >= CHUNK else BLOCK[:left]
            await response.write(piece)
            left -= len(piece)
        await response.end()
    else:
        response.status = 404
        await response.end(b"not found\n")


async def run_listener(args: argparse.Namespace) -> None:
    import logging

    from hyrelay.client import HybridConnectionListener

    logging.basicConfig(level=logging.WARNING)
    proxy = None
    if args.to:
        from hyrelay.client.proxy import ProxyHandler

        proxy = ProxyHandler(args.to)
    listeners = [HybridConnectionListener(args.cs, entity=args.hc, request_handler=proxy or handler)
                 for _ in range(args.listeners)]
    for listener in listeners:
        await listener.open()
    announce({"port": 0, "listeners": len(listeners)})
    await wait_for_signal()
    await asyncio.gather(*(listener.close() for listener in listeners), return_exceptions=True)
    if proxy is not None:
        await proxy.close()


# -- the relay (for profiling) -----------------------------------------------------------------
async def run_relay(args: argparse.Namespace) -> None:
    import logging
    import shutil
    import tempfile

    from hyrelay.server.app import RelayServer
    from hyrelay.server.config import RelayConfig

    logging.basicConfig(level=logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="http-bench-relay-")
    try:
        srv = RelayServer(RelayConfig(port=0, data_dir=Path(tmp), log_level="WARNING"))
        await srv.start()
        assert srv.store is not None and srv.relay is not None
        for hc in ("proxy", "native"):
            srv.store.create_hc("hyrelay", hc, requires_client_authorization=False)
        srv.relay.refresh()
        announce({"port": srv.port, "cs": srv.connection_string()})
        await wait_for_signal()
        await srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("app", "listener", "relay"))
    parser.add_argument("cs", nargs="?", help="listener: the relay's connection string")
    parser.add_argument("--hc", default="native", help="listener: the hybrid connection")
    parser.add_argument("--listeners", type=int, default=1, help="listener: control channels to open")
    parser.add_argument("--to", help="listener: forward every request to this URL (ProxyHandler)")
    parser.add_argument("--profile", help="write cProfile stats (CPU time) of the whole run here")
    args = parser.parse_args()
    raise_nofile()
    run = {"app": run_app, "listener": run_listener, "relay": run_relay}[args.kind]
    # CPU time, not wall time: see the module docstring.
    run_profiled(run(args), args.profile, time.process_time)


if __name__ == "__main__":
    main()
