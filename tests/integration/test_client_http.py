"""Relayed HTTP through hyrelay.client: request handlers, the ASGI adapter and the reverse proxy.

A real relay on 127.0.0.1, a real aiohttp HTTP client, real local services. No mocks; every
timeout is only a hang guard, and "streamed" is shown by ordering (a party waits on an event
that only the other side of the relay can set), never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from hyrelay.client import (ConnectionClosed, HybridConnection, HybridConnectionClient, HybridConnectionListener,
                            RelayedRequest, RelayedResponse)
from hyrelay.client.asgi import AsgiHandler, serve_asgi
from hyrelay.client.proxy import ProxyHandler

GUARD = 30.0  # seconds; only ever a hang guard
HC = "web"
MIB = 1 << 20


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture
async def base(relay) -> str:
    """The hybrid connection (anonymous senders allowed) and its public HTTP base URL."""
    relay.create_hc(HC, requires_client_authorization=False)
    return f"{relay.http}/{HC}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GUARD)) as session:
        yield session


@contextlib.asynccontextmanager
async def serving(relay, handler, **kwargs) -> AsyncIterator[HybridConnectionListener]:
    listener = HybridConnectionListener(relay.server.connection_string(), entity=HC,
                                        request_handler=handler, **kwargs)
    async with asyncio.timeout(GUARD):
        async with listener:
            yield listener


def blob(size: int) -> bytes:
    return os.urandom(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the SDK's request handler ------------------------------------------------------------------
async def test_small_get_is_answered_inline(relay, base: str, http: aiohttp.ClientSession) -> None:
    seen: dict[str, object] = {}

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        seen.update(method=request.method, target=request.target, path=request.path, query=request.query,
                    root=request.root_path, custom=request.headers["x-CUSTOM"], body=await request.read(),
                    remote=request.remote_endpoint, params=request.query_params)
        response.headers["Content-Type"] = "application/json"
        await response.end(json.dumps({"hello": "world"}).encode())
        seen["via"] = response.via

    async with serving(relay, handler):
        async with http.get(f"{base}/api/x?a=1&b=two&sb-hc-id=zz", headers={"X-Custom": "yes"}) as resp:
            assert resp.status == 200 and resp.reason == "OK"
            assert resp.headers["Content-Type"] == "application/json"
            assert await resp.json() == {"hello": "world"}
    assert seen["method"] == "GET" and seen["target"] == f"/{HC}/api/x?a=1&b=two"
    assert seen["path"] == "/api/x" and seen["query"] == "a=1&b=two" and seen["root"] == f"/{HC}"
    assert seen["params"] == {"a": "1", "b": "two"}
    assert seen["custom"] == "yes" and seen["body"] == b""
    assert seen["remote"] is not None and seen["remote"][0] == "127.0.0.1"
    assert seen["via"] == "control"


async def test_5mib_post_streams_into_the_handler(relay, base: str, http: aiohttp.ClientSession) -> None:
    data = blob(5 * MIB)
    chunks: list[int] = []

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        digest = hashlib.sha256()
        async for chunk in request.body:
            chunks.append(len(chunk))
            digest.update(chunk)
        await response.end(digest.hexdigest().encode())

    async with serving(relay, handler):
        async with http.post(f"{base}/upload", data=data) as resp:
            assert resp.status == 200
            assert await resp.text() == sha(data)
    assert sum(chunks) == len(data) and len(chunks) > 1  # it came in pieces, not as one buffer


async def test_5mib_response_streams_over_a_rendezvous(relay, base: str, http: aiohttp.ClientSession) -> None:
    data = blob(5 * MIB)
    via: list[str | None] = []

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        response.headers["Content-Type"] = "application/octet-stream"
        for at in range(0, len(data), 100_000):
            await response.write(data[at:at + 100_000])
        await response.end()
        via.append(response.via)

    async with serving(relay, handler):
        async with http.get(f"{base}/download") as resp:
            assert resp.status == 200
            body = await resp.read()
    assert len(body) == len(data) and sha(body) == sha(data)
    assert via == ["rendezvous"]


async def test_slow_response_is_flushed_over_a_rendezvous(relay, base: str, http: aiohttp.ClientSession) -> None:
    # The first bytes reach the client while the handler is still running: only the flush timer's
    # rendezvous can deliver them, since the control channel answers only at end().
    release = asyncio.Event()
    via: list[str | None] = []

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        await response.write(b"first;")
        await release.wait()
        await response.write(b"second")
        await response.end()
        via.append(response.via)

    async with serving(relay, handler, response_flush_interval=0.2):
        async with http.get(f"{base}/slow") as resp:
            assert resp.status == 200
            first = await resp.content.readexactly(len(b"first;"))
            release.set()
            rest = await resp.read()
    assert first + rest == b"first;second"
    assert via == ["rendezvous"]


async def test_small_slow_response_without_flush_waits_for_end(relay, base: str,
                                                             http: aiohttp.ClientSession) -> None:
    via: list[str | None] = []

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        await response.write(b"a")
        await asyncio.sleep(0.05)
        await response.end(b"b")
        via.append(response.via)

    async with serving(relay, handler, response_flush_interval=None):
        async with http.get(f"{base}/") as resp:
            assert await resp.read() == b"ab"
    assert via == ["control"]


async def test_chunked_upload_reaches_the_handler_while_still_being_sent(relay, base: str,
                                                                         http: aiohttp.ClientSession) -> None:
    parts = [blob(10_000), blob(100_000), blob(3)]
    got_first = asyncio.Event()
    received: list[bytes] = []

    async def upload() -> AsyncIterator[bytes]:
        yield parts[0]
        await got_first.wait()  # the handler holds the first piece before the rest is even sent
        yield parts[1]
        yield parts[2]

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        async for chunk in request.body:
            received.append(chunk)
            got_first.set()
        response.status = 201
        await response.end(sha(b"".join(received)).encode())

    async with serving(relay, handler):
        async with http.post(f"{base}/chunked", data=upload()) as resp:
            assert resp.status == 201
            assert await resp.text() == sha(b"".join(parts))


async def test_head_sends_headers_and_no_body(relay, base: str, http: aiohttp.ClientSession) -> None:
    methods: list[str] = []

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        methods.append(request.method)
        response.headers["X-Thing"] = "present"
        if request.path == "/sized":
            response.headers["Content-Length"] = "12345"  # what a GET would carry
        await response.end(b"a body a HEAD client must not get")

    async with serving(relay, handler):
        async with http.head(f"{base}/thing") as resp:
            assert resp.status == 200 and resp.headers["X-Thing"] == "present"
            assert await resp.read() == b""
        async with http.head(f"{base}/sized") as resp:
            assert resp.headers["Content-Length"] == "12345" and await resp.read() == b""
        async with http.get(f"{base}/sized") as resp:  # a GET is framed by its real body, not the header
            assert await resp.read() == b"a body a HEAD client must not get"
    assert methods == ["HEAD", "HEAD", "GET"]


async def test_custom_status_reason_and_repeated_response_headers(relay, base: str,
                                                                  http: aiohttp.ClientSession) -> None:
    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        response.status, response.reason = 418, "Short And Stout"
        response.headers.add("X-Multi", "a")
        response.headers.add("x-multi", "b")
        response.headers["Content-Length"] = "999"  # hop-by-hop: dropped, the relay frames the body
        await response.end(b"tea")

    async with serving(relay, handler):
        async with http.get(f"{base}/pot") as resp:
            assert (resp.status, resp.reason) == (418, "Short And Stout")
            assert resp.headers["X-Multi"] == "a, b"
            assert await resp.read() == b"tea"


async def test_repeated_request_headers_arrive_joined(relay, base: str, http: aiohttp.ClientSession) -> None:
    seen: list[str] = []

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        seen.append(request.headers["X-Rep"])
        await response.end()

    async with serving(relay, handler):
        headers = CIMultiDict([("X-Rep", "one"), ("X-Rep", "two")])
        async with http.get(f"{base}/h", headers=headers) as resp:
            assert resp.status == 200 and await resp.read() == b""
    assert seen == ["one, two"]


async def test_50_requests_are_in_flight_at_once(relay, base: str, http: aiohttp.ClientSession) -> None:
    total = 50
    arrived = 0
    all_in = asyncio.Event()

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == total:
            all_in.set()
        await all_in.wait()  # nobody is answered until all 50 handlers run at the same time
        await response.end(request.query_params["i"].encode())

    async def one(i: int) -> str:
        async with http.get(f"{base}/c?i={i}") as resp:
            assert resp.status == 200
            return await resp.text()

    async with serving(relay, handler):
        results = await asyncio.gather(*(one(i) for i in range(total)))
    assert results == [str(i) for i in range(total)]


async def test_handler_that_raises_gives_500_naming_the_error(relay, base: str,
                                                              http: aiohttp.ClientSession) -> None:
    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        await response.write(b"partial, buffered, discarded")
        raise LookupError("boom")

    async with serving(relay, handler):
        async with http.get(f"{base}/broken") as resp:
            assert resp.status == 500
            assert "LookupError" in resp.reason
            assert "partial" not in await resp.text()


async def test_handler_that_raises_mid_stream_cuts_the_response(relay, base: str,
                                                                http: aiohttp.ClientSession) -> None:
    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        await response.write(blob(200_000))  # more than fits inline: the head goes by rendezvous
        await response.write(blob(200_000))  # and body bytes have reached the client
        raise RuntimeError("halfway")

    async with serving(relay, handler):
        async with http.get(f"{base}/half") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


async def test_answer_without_reading_a_large_body_keeps_the_listener_working(
        relay, base: str, http: aiohttp.ClientSession) -> None:
    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        if request.path == "/refuse":
            response.status = 413
            await response.end(b"too big, not reading it")
        else:
            await response.end(b"%d" % len(await request.read()))

    async with serving(relay, handler):
        async with http.post(f"{base}/refuse", data=blob(300_000)) as resp:
            assert resp.status == 413 and await resp.read() == b"too big, not reading it"
        for size in (10, 300_000):
            async with http.post(f"{base}/count", data=blob(size)) as resp:
                assert await resp.read() == str(size).encode()


async def test_an_impossible_status_gives_500(relay, base: str, http: aiohttp.ClientSession) -> None:
    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        response.status = 101
        await response.end(b"x")

    async with serving(relay, handler):
        async with http.get(f"{base}/") as resp:
            assert resp.status == 500 and "ValueError" in resp.reason
            assert "ValueError" in await resp.text()


async def test_listener_without_handler_answers_501(relay, base: str, http: aiohttp.ClientSession) -> None:
    async with serving(relay, None):
        async with http.get(f"{base}/") as resp:
            assert resp.status == 501
            assert "RequestHandler has not been configured" in resp.reason
            assert "RequestHandler has not been configured" in await resp.text()


async def test_requests_and_websockets_share_one_listener(relay, base: str, http: aiohttp.ClientSession) -> None:
    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        await response.end(b"http:" + await request.read())

    async def echo(connection: HybridConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                await connection.send(message)

    async with serving(relay, handler) as listener:
        async def accept_loop() -> None:
            async for connection in listener:
                asyncio.create_task(echo(connection))

        acceptor = asyncio.create_task(accept_loop())
        client = HybridConnectionClient(relay.server.connection_string(), entity=HC)
        async with await client.connect() as ws:
            for i in range(3):
                await ws.send(f"ws{i}")
                async with http.post(f"{base}/mixed", data=f"body{i}".encode()) as resp:
                    assert await resp.read() == f"http:body{i}".encode()
                assert await ws.recv() == f"ws{i}"
        acceptor.cancel()


# -- ASGI ---------------------------------------------------------------------------------------
def starlette_app(release: asyncio.Event, lifespan_log: list[str]) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        lifespan_log.append("startup")
        yield {"greeting": "hello from lifespan"}
        lifespan_log.append("shutdown")

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({
            "item": request.path_params["item"],
            "path": request.url.path,
            "root_path": request.scope["root_path"],
            "route_url": str(request.url_for("item", item="other")),
            "query": dict(request.query_params),
            "client": request.client.host if request.client else None,
            "header": request.headers.get("x-custom"),
            "greeting": request.state.greeting,
        })

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"chunk-1;"
            await release.wait()  # set by the test once it holds chunk-1
            for i in range(2, 5):
                await asyncio.sleep(0.01)
                yield f"chunk-{i};".encode()
        return StreamingResponse(chunks(), media_type=request.query_params.get("type", "text/plain"))

    async def upload(request: Request) -> JSONResponse:
        digest, size, pieces = hashlib.sha256(), 0, 0
        async for chunk in request.stream():
            if chunk:
                digest.update(chunk)
                size += len(chunk)
                pieces += 1
        return JSONResponse({"sha256": digest.hexdigest(), "size": size, "pieces": pieces}, status_code=201)

    return Starlette(routes=[Route("/items/{item}", item, name="item"), Route("/stream", stream),
                             Route("/upload", upload, methods=["POST"])], lifespan=lifespan)


async def test_asgi_json_route_sees_a_complete_scope(relay, base: str, http: aiohttp.ClientSession) -> None:
    log: list[str] = []
    handler = AsgiHandler(starlette_app(asyncio.Event(), log))
    async with handler:
        async with serving(relay, handler):
            async with http.get(f"{base}/items/42?q=a%20b", headers={"X-Custom": "c"}) as resp:
                assert resp.status == 200
                doc = await resp.json()
    assert doc == {"item": "42", "path": f"/{HC}/items/42", "root_path": f"/{HC}",
                   "route_url": f"{relay.http}/{HC}/items/other", "query": {"q": "a b"},
                   "client": "127.0.0.1", "header": "c", "greeting": "hello from lifespan"}
    assert log == ["startup", "shutdown"]


async def test_asgi_streaming_response_flows_before_the_app_finishes(relay, base: str,
                                                                     http: aiohttp.ClientSession) -> None:
    release = asyncio.Event()
    handler = AsgiHandler(starlette_app(release, []))
    # text/plain is flushed by the flush interval; text/event-stream at once. Both must flow.
    async with handler, serving(relay, handler, response_flush_interval=0.2):
        for media in ("text/plain", "text/event-stream"):
            release.clear()
            async with http.get(f"{base}/stream", params={"type": media}) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith(media)
                first = await resp.content.readexactly(len(b"chunk-1;"))
                assert first == b"chunk-1;"
                release.set()
                assert await resp.read() == b"chunk-2;chunk-3;chunk-4;"


async def test_asgi_upload_streams_the_request_body(relay, base: str, http: aiohttp.ClientSession) -> None:
    handler = AsgiHandler(starlette_app(asyncio.Event(), []))
    data = blob(3 * MIB + 17)
    small = b"tiny body"
    async with handler, serving(relay, handler):
        async with http.post(f"{base}/upload", data=data) as resp:
            assert resp.status == 201
            doc = await resp.json()
            assert (doc["sha256"], doc["size"]) == (sha(data), len(data)) and doc["pieces"] > 1
        async with http.post(f"{base}/upload", data=small) as resp:
            assert await resp.json() == {"sha256": sha(small), "size": len(small), "pieces": 1}


async def test_asgi_app_error_gives_500_and_unknown_route_404(relay, base: str,
                                                             http: aiohttp.ClientSession) -> None:
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        if scope["path"].endswith("/crash"):
            raise KeyError("crash")
        await send({"type": "http.response.start", "status": 404, "headers": [(b"x-app", b"raw")]})
        await send({"type": "http.response.body", "body": b"nope"})

    handler = AsgiHandler(app)
    async with handler, serving(relay, handler):
        async with http.get(f"{base}/crash") as resp:
            assert resp.status == 500 and "KeyError" in resp.reason and await resp.read()
        async with http.get(f"{base}/missing") as resp:
            assert resp.status == 404 and resp.headers["x-app"] == "raw" and await resp.read() == b"nope"


async def test_serve_asgi_runs_lifespan_around_the_listener(relay, base: str, http: aiohttp.ClientSession) -> None:
    log: list[str] = []
    listener = HybridConnectionListener(relay.server.connection_string(), entity=HC)
    task = asyncio.create_task(serve_asgi(starlette_app(asyncio.Event(), log), listener))
    async with asyncio.timeout(GUARD):
        while not (listener.opened and listener.request_handler is not None and relay.relay.router.listeners(
                f"hyrelay/{HC}")):
            await asyncio.sleep(0.01)
        async with http.get(f"{base}/items/1") as resp:
            assert (await resp.json())["greeting"] == "hello from lifespan"
        await listener.close()
        await task
    assert log == ["startup", "shutdown"]


# -- the reverse proxy --------------------------------------------------------------------------
@pytest.fixture
async def local_app() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A real aiohttp service on 127.0.0.1:0, standing in for the user's local app."""
    release = asyncio.Event()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({
            "path": request.path, "query": request.query_string, "host": request.host,
            "xff": request.headers.get("X-Forwarded-For"), "proto": request.headers.get("X-Forwarded-Proto"),
            "xfhost": request.headers.get("X-Forwarded-Host"), "prefix": request.headers.get("X-Forwarded-Prefix"),
            "custom": request.headers.get("X-Custom"), "ua": request.headers.get("User-Agent"),
        }, headers={"X-Served-By": "local"})

    async def echo(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await release.wait()
        await response.write(b"data: 2\n\n")
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/hello?from=redirect")

    app = web.Application()
    app.add_routes([web.get("/hello", hello), web.post("/echo", echo), web.get("/events", events),
                    web.get("/redirect", redirect)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", release
    finally:
        await runner.cleanup()


async def test_proxy_get_with_forwarding_headers(relay, base: str, http: aiohttp.ClientSession,
                                                 local_app: tuple[str, asyncio.Event]) -> None:
    target, _ = local_app
    async with ProxyHandler(target) as proxy, serving(relay, proxy):
        headers = {"X-Custom": "kept", "X-Forwarded-For": "203.0.113.9"}
        async with http.get(f"{base}/hello?a=1&b=2", headers=headers) as resp:
            assert resp.status == 200 and resp.headers["X-Served-By"] == "local"
            doc = await resp.json()
    assert doc == {"path": "/hello", "query": "a=1&b=2", "host": target.removeprefix("http://"),
                   "xff": "203.0.113.9, 127.0.0.1", "proto": "http", "xfhost": relay.http.removeprefix("http://"),
                   "prefix": f"/{HC}", "custom": "kept", "ua": http.headers.get("User-Agent")
                   or aiohttp.http.SERVER_SOFTWARE}


async def test_proxy_answers_head_with_the_length_a_get_would_get(relay, base: str, http: aiohttp.ClientSession,
                                                                   local_app: tuple[str, asyncio.Event]) -> None:
    target, _ = local_app
    async with ProxyHandler(target) as proxy, serving(relay, proxy):
        async with http.get(f"{base}/hello") as resp:
            length = len(await resp.read())
        async with http.head(f"{base}/hello") as resp:
            assert resp.status == 200 and resp.headers["X-Served-By"] == "local"
            assert resp.headers["Content-Length"] == str(length) and await resp.read() == b""


async def test_proxy_streams_a_5mib_post_both_ways(relay, base: str, http: aiohttp.ClientSession,
                                                   local_app: tuple[str, asyncio.Event]) -> None:
    target, _ = local_app
    data = blob(5 * MIB)
    async with ProxyHandler(target) as proxy, serving(relay, proxy):
        async with http.post(f"{base}/echo", data=data) as resp:
            assert resp.status == 200
            body = await resp.read()
        async with http.post(f"{base}/echo", data=b"small") as resp:
            assert await resp.read() == b"small"
    assert sha(body) == sha(data)


async def test_proxy_passes_an_event_stream_through_as_it_flows(relay, base: str, http: aiohttp.ClientSession,
                                                                local_app: tuple[str, asyncio.Event]) -> None:
    target, release = local_app
    async with ProxyHandler(target) as proxy, serving(relay, proxy):  # default 2 s flush interval
        async with http.get(f"{base}/events") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert await resp.content.readexactly(len(b"data: 1\n\n")) == b"data: 1\n\n"
            release.set()
            assert await resp.read() == b"data: 2\n\n"


async def test_proxy_rewrites_redirects_into_the_relay(relay, base: str, http: aiohttp.ClientSession,
                                                       local_app: tuple[str, asyncio.Event]) -> None:
    target, _ = local_app
    async with ProxyHandler(target) as proxy, serving(relay, proxy):
        async with http.get(f"{base}/redirect", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == f"/{HC}/hello?from=redirect"
            await resp.read()
        async with http.get(f"{base}/redirect") as resp:  # followed through the relay
            assert (await resp.json())["query"] == "from=redirect"


async def test_proxy_answers_502_when_the_local_service_is_down(relay, base: str,
                                                                http: aiohttp.ClientSession) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # the port is now (almost certainly) closed
    async with ProxyHandler(f"http://127.0.0.1:{port}") as proxy, serving(relay, proxy):
        async with http.get(f"{base}/anything") as resp:
            assert resp.status == 502
            assert "unreachable" in resp.reason and f"127.0.0.1:{port}" in resp.reason
            assert "unreachable" in await resp.text()


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that records where it tunnels to."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "ConnectProxy":
        self.server = await asyncio.start_server(self._tunnel, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_the_listener_reaches_the_relay_through_the_proxy_the_environment_names(
        relay, base: str, http: aiohttp.ClientSession, monkeypatch) -> None:
    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        await response.end(b"via the proxy")

    async with ConnectProxy() as proxy:
        for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", proxy.url)  # what a listener behind a corporate proxy has
        async with serving(relay, handler):
            async with http.get(f"{base}/x") as resp:  # the sender side is not proxied (trust_env off)
                assert resp.status == 200 and await resp.read() == b"via the proxy"
        assert f"127.0.0.1:{relay.port}" in proxy.targets  # the control channel went through it


async def test_a_name_with_a_slash_reached_escaped_or_not_gives_the_handler_the_same_path(
        relay, http: aiohttp.ClientSession) -> None:
    relay.create_hc("orders/EU", requires_client_authorization=False)

    async def handler(request: RelayedRequest, response: RelayedResponse) -> None:
        await response.end(f"{request.root_path}|{request.path}".encode())

    listener = HybridConnectionListener(relay.server.connection_string(), entity="orders/EU",
                                        request_handler=handler)
    async with asyncio.timeout(GUARD), listener:
        for target in ("/orders/EU/items/7", "/orders%2FEU/items/7"):
            async with http.get(f"{relay.http}{target}") as resp:
                assert resp.status == 200 and await resp.read() == b"/orders/EU|/items/7", target
