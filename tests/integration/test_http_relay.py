"""Relayed HTTP against real sockets: a bare WebSocket listener, so every wire detail is under test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from .wsutil import ws_connect


class RawHttpListener:
    """A listener that hands each relayed request to a test-supplied coroutine."""

    def __init__(self, relay, name: str, answer) -> None:
        self.relay, self.name, self.answer = relay, name, answer
        self.requests: list[dict] = []
        self.control = None
        self.sockets: dict[str, object] = {}
        self.broken: list[dict] = []
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "RawHttpListener":
        self.control = await ws_connect(f"{self.relay.ws}/$hc/{self.name}?sb-hc-action=listen",
                                        self.relay.auth(self.name))
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.control.close()

    async def _run(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                request = json.loads(await self.control.recv())["request"]
                body = b""
                if request.get("body"):
                    body = await self.control.recv()
                task = asyncio.create_task(self._handle(request, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _handle(self, request: dict, body: bytes) -> None:
        if "method" not in request:  # a stub: fetch the request over its rendezvous
            rendezvous = await ws_connect(request["address"])
            try:
                request = json.loads(await rendezvous.recv())["request"]
                self.sockets[request["id"]] = rendezvous
                body = b"".join([f async for f in rendezvous.recv_streaming()]) if request["body"] else b""
            except ConnectionClosed:  # the relay gave up on this request
                self.broken.append(request)
                return
        self.requests.append(request)
        await self.answer(self, request, body)

    async def respond(self, request: dict, status: int = 200, body: bytes | None = b"ok", **extra) -> None:
        doc = {"requestId": request["id"], "statusCode": status, "responseHeaders": {}, "body": body is not None}
        doc.update(extra)
        channel = self.sockets.get(request["id"], self.control)
        await channel.send(json.dumps({"response": doc}))
        if body is not None:
            await channel.send(body)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def ok(listener, request, body):
    await listener.respond(request, body=b"ok:" + body)


async def test_inline_request_shape_and_via(relay, http):
    relay.create_hc("shape", requires_client_authorization=False)
    async with RawHttpListener(relay, "shape", ok) as listener:
        async with http.post(f"{relay.http}/shape/x/y?a=1&sb-hc-id=7&b=2", data=b"body",
                             headers={"X-Custom": "v", "Via": "1.1 upstream"}) as r:
            assert r.status == 200 and await r.read() == b"ok:body"
            assert r.headers["Via"].startswith("1.1 ")
        request = listener.requests[0]
        assert request["requestTarget"] == "/shape/x/y?a=1&b=2"
        assert request["method"] == "POST" and request["body"] is True
        assert request["requestHeaders"]["X-Custom"] == "v"
        assert request["requestHeaders"]["Via"] == "1.1 upstream"
        assert "Content-Length" not in request["requestHeaders"]
        assert "sb-hc-action=request" in request["address"]
        assert request["remoteEndpoint"]["address"] == "127.0.0.1"


async def test_service_errors_are_json_without_via(relay, http):
    relay.create_hc("offline", requires_client_authorization=False)
    relay.create_hc("guarded")
    async with http.get(f"{relay.http}/nosuch/thing") as r:
        assert r.status == 404 and "Via" not in r.headers
        error = (await r.json())["error"]
        assert error["code"] == "EndpointNotFound" and error["trackingId"] in error["message"]
    async with http.get(f"{relay.http}/offline") as r:
        assert r.status == 502 and "Via" not in r.headers
        assert "No listener" in (await r.json())["error"]["message"]
    async with http.get(f"{relay.http}/guarded", headers={"ServiceBusAuthorization": "SharedAccessSignature x"}) as r:
        assert r.status == 401 and "TrackingId:" in r.reason


async def test_listener_that_never_answers_gets_504(relay, http):
    relay.store.create_hc("hyrelay", "silent", requires_client_authorization=False, request_timeout=0.5)
    relay.relay.refresh()

    async def never(listener, request, body):
        await asyncio.sleep(3600)

    async with RawHttpListener(relay, "silent", never):
        async with http.get(f"{relay.http}/silent") as r:
            assert r.status == 504 and "did not respond" in (await r.json())["error"]["message"]


async def test_streaming_answer_is_not_cut_while_data_flows(relay, http):
    relay.store.create_hc("hyrelay", "sse", requires_client_authorization=False, request_timeout=1)
    relay.relay.refresh()

    async def stream(listener, request, body):
        async with ws_connect(request["address"]) as rendezvous:
            await rendezvous.send(json.dumps({"response": {
                "requestId": request["id"], "statusCode": 200,
                "responseHeaders": {"Content-Type": "text/event-stream"}, "body": True}}))

            async def events():
                for i in range(8):  # 8 x 0.4 s: far past the 1 s limit, but never idle that long
                    yield f"data: {i}\n\n".encode()
                    await asyncio.sleep(0.4)

            await rendezvous.send(events())
            with contextlib.suppress(ConnectionClosed):
                await rendezvous.recv()

    async with RawHttpListener(relay, "sse", stream):
        async with http.get(f"{relay.http}/sse") as r:
            first = await r.content.readline()
            assert first == b"data: 0\n"
            rest = await r.read()
        assert rest.count(b"data:") == 7


@pytest.mark.parametrize("relay_config", [{"max_request_body": 100_000}])
async def test_body_over_the_limit_gets_413_and_others_continue(relay, http):
    relay.create_hc("limited", requires_client_authorization=False)
    async with RawHttpListener(relay, "limited", ok) as listener:
        async with http.post(f"{relay.http}/limited", data=b"x" * 200_000) as r:
            assert r.status == 413 and "100000" in (await r.json())["error"]["message"]

        async def chunks():
            for _ in range(30):
                yield b"y" * 10_000

        async with http.post(f"{relay.http}/limited", data=chunks()) as r:
            assert r.status == 413
        async def cut() -> None:  # the listener learns it on its own socket, a moment later
            while not listener.broken:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(cut(), 10)  # hang guard: fails if the relay never cuts the rendezvous
        async with http.post(f"{relay.http}/limited", data=b"small") as r:
            assert r.status == 200 and await r.read() == b"ok:small"


async def test_headers_over_the_limit_get_431(relay, http):
    relay.create_hc("heads", requires_client_authorization=False)
    async with RawHttpListener(relay, "heads", ok):
        headers = {f"X-H{i}": "v" * 8000 for i in range(5)}
        async with http.get(f"{relay.http}/heads", headers=headers) as r:
            assert r.status == 431
        async with http.get(f"{relay.http}/heads") as r:
            assert r.status == 200


async def test_malformed_unknown_duplicate_and_stray_responses(relay, http):
    relay.create_hc("liar", requires_client_authorization=False)

    async def answer(listener, request, body):
        target = request["requestTarget"]
        if target.endswith("/malformed"):
            await listener.control.send(json.dumps({"response": {"requestId": request["id"], "statusCode": "abc",
                                                                 "body": True}}))
            await listener.control.send(b"ignored body")
        elif target.endswith("/malformed-compact"):  # the typed fast path (hyco-https and the SDK write compact JSON)
            await listener.control.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 101,
                                                                 "body": True}}, separators=(",", ":")))
            await listener.control.send(b"ignored body")
        elif target.endswith("/unknown-then-real"):
            await listener.control.send(json.dumps({"response": {"requestId": "nope", "statusCode": 200,
                                                                 "body": True}}))
            await listener.control.send(b"for nobody")
            await listener.respond(request, body=b"real")
        elif target.endswith("/twice"):
            await listener.respond(request, body=b"first")
            await listener.respond(request, body=b"second")
        elif target.endswith("/stray"):
            await listener.control.send(b"binary with no response before it")

    async with RawHttpListener(relay, "liar", answer) as listener:
        async with http.get(f"{relay.http}/liar/malformed") as r:
            assert r.status == 502 and "malformed response" in (await r.json())["error"]["message"]
        async with http.get(f"{relay.http}/liar/malformed-compact") as r:
            message = (await r.json())["error"]["message"]
            assert r.status == 502 and "statusCode 101 cannot be relayed" in message and "TrackingId:" in message
        async with http.get(f"{relay.http}/liar/unknown-then-real") as r:
            assert r.status == 200 and await r.read() == b"real"
        async with http.get(f"{relay.http}/liar/twice") as r:
            assert r.status == 200 and await r.read() == b"first"
        async with http.get(f"{relay.http}/liar/twice") as r:  # the channel is still in sync
            assert r.status == 200 and await r.read() == b"first"
        async with http.get(f"{relay.http}/liar/stray") as r:
            assert r.status == 502  # the listener broke the protocol and lost its channel
        await asyncio.wait_for(listener._task, 10)  # its read loop ends: the relay closed the channel
        assert listener.control.close_code == 1008


async def test_response_that_is_not_utf8_closes_the_channel_with_1007(relay, http):
    relay.create_hc("mangled", requires_client_authorization=False)

    async def answer(listener, request, body):
        await listener.control.send(b'{"response":{"requestId":"' + request["id"].encode() + b'\xff","statusCode":200}}',
                                    text=True)

    async with RawHttpListener(relay, "mangled", answer) as listener:
        async with http.get(f"{relay.http}/mangled/x") as r:
            assert r.status == 502  # its listener is gone at once, not a 504 a minute later
            assert "TrackingId:" in (await r.json())["error"]["message"]
        await asyncio.wait_for(listener._task, 10)
        assert listener.control.close_code == 1007
        assert "UTF-8" in listener.control.close_reason


async def test_listener_drop_fails_requests_in_flight_at_once(relay, http):
    relay.create_hc("dropper", requires_client_authorization=False)
    arrived = asyncio.Event()

    async def hold(listener, request, body):
        arrived.set()
        await asyncio.sleep(3600)

    async with RawHttpListener(relay, "dropper", hold) as listener:
        pending = [asyncio.create_task(http.get(f"{relay.http}/dropper/{i}")) for i in range(3)]
        await arrived.wait()
        while len(listener.requests) < 3:
            await asyncio.sleep(0.05)
        listener.control.transport.abort()
        for task in pending:
            response = await asyncio.wait_for(task, 10)  # well under the 60 s request timeout
            assert response.status == 502
            response.release()


async def test_client_that_goes_away_releases_the_listener_side(relay, http):
    relay.create_hc("quitter", requires_client_authorization=False)
    closed = asyncio.Event()

    async def endless(listener, request, body):
        async with ws_connect(request["address"]) as rendezvous:
            await rendezvous.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 200,
                                                           "body": True}}))

            async def forever():
                while True:
                    yield b"z" * 65536
                    await asyncio.sleep(0)

            with contextlib.suppress(ConnectionClosed):
                await rendezvous.send(forever())
            closed.set()

    async with RawHttpListener(relay, "quitter", endless):
        r = await http.get(f"{relay.http}/quitter")
        await r.content.readexactly(1 << 20)
        r.close()  # the client hangs up mid-stream
        await asyncio.wait_for(closed.wait(), 10)
    assert relay.relay.router.pending_count == 0


def _slow_upload(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n".encode())
        sock.sendall(b"a" * 1000)  # then stop half-way and hang up


async def test_client_that_stops_half_way_through_its_body(relay, http):
    relay.create_hc("halfway", requires_client_authorization=False)
    async with RawHttpListener(relay, "halfway", ok) as listener:
        await asyncio.to_thread(_slow_upload, relay.port, "halfway")

        async def settled() -> None:
            # Whether or not the request got as far as the listener (that depends on how fast the
            # sender hung up), nothing may stay pending on either side.
            while relay.relay.router.pending_count or listener._tasks or listener.control is None:
                await asyncio.sleep(0.05)

        async def answered() -> None:  # the relay finished with it (if aiohttp handed it over at all)
            while not relay.relay.observer.hc("halfway").http_requests:
                await asyncio.sleep(0.05)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(answered(), 5)
        await asyncio.wait_for(settled(), 15)
        assert listener.requests == [], "a truncated upload was delivered as a complete request"
        async with http.post(f"{relay.http}/halfway", data=b"q" * 100) as r:  # business as usual
            assert r.status == 200 and await r.read() == b"ok:" + b"q" * 100


async def test_expect_100_continue(relay, http):
    relay.create_hc("expect", requires_client_authorization=False)
    async with RawHttpListener(relay, "expect", ok) as listener:
        async with http.post(f"{relay.http}/expect", data=b"payload", expect100=True) as r:
            assert r.status == 200 and await r.read() == b"ok:payload"
        assert "Expect" not in listener.requests[0]["requestHeaders"]


async def test_a_listener_too_far_behind_gets_no_more_requests_503(relay, http):
    """A listener that stops reading its control channel: once 1 MiB waits for it on the relay's
    side, further requests get 503 with a tracking id instead of piling up; others go on."""
    relay.create_hc("stuck", requires_client_authorization=False)
    relay.create_hc("fine", requires_client_authorization=False)
    body = b"x" * 60000  # inline: each request puts about 60 KB on the control channel
    post = (b"POST /stuck/x HTTP/1.1\r\nHost: relay.test\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    clients: list[asyncio.StreamWriter] = []
    # max_queue=1: the listener's socket stops reading at once, so TCP pushes back on the relay.
    async with ws_connect(f"{relay.ws}/$hc/stuck?sb-hc-action=listen", relay.auth("stuck"), max_queue=1,
                          close_timeout=0.5):
        async with RawHttpListener(relay, "fine", ok):
            try:
                # 400 × 60 KB is far more than the loopback socket buffers and the 1 MiB limit hold.
                for _ in range(400):
                    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
                    clients.append(writer)
                    writer.write(post)
                    await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 10)  # the last one is refused at once
                assert line.startswith(b"HTTP/1.1 503 "), line
                assert b"too far behind" in line and b"TrackingId:" in line
                async with http.get(f"{relay.http}/fine/still") as r:  # everyone else is served
                    assert r.status == 200 and await r.read() == b"ok:"
            finally:
                for writer in clients:
                    writer.close()
