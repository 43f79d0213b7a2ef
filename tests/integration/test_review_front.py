"""Review of the relay's own HTTP/1.1 front end (server/httpconn.py) and what it calls.

Every test here fails on the code as reviewed and passes once the bug it names is fixed.
Real sockets on 127.0.0.1; timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
import json

from .test_http_front import Conn, echo, get
from .test_http_relay import RawHttpListener


async def _until(predicate, guard: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), guard)


FLOOD_CHUNK = 65536


def flooding(flowing: asyncio.Event, *, paced: bool = False):
    """A listener's answer: 64 MiB (far more than a client reads or sockets hold) streamed on the
    control channel for ``.../flood``, an echo otherwise; *flowing* is set once 4 MiB are out.

    *paced*: a fragment per millisecond, so the relay drains into the client's socket until it is
    full and then waits there; sent at once, the data piles up in one read of the relay's.
    """
    async def answer(listener, request, body):
        if not request["requestTarget"].endswith("/flood"):
            await echo(listener, request, body)
            return
        doc = {"requestId": request["id"], "statusCode": 200, "responseHeaders": {}, "body": True}

        async def fragments():
            for i in range(1024):
                if i == 64:
                    flowing.set()
                if paced:
                    await asyncio.sleep(0.001)
                yield b"z" * FLOOD_CHUNK

        await listener.control.send(json.dumps({"response": doc}))
        await listener.control.send(fragments())

    return answer


async def test_pipelined_client_paused_for_backlog_is_resumed_for_a_partial_request(relay):
    """httpconn._advance pauses reading while a request is in flight and the buffer passes
    max_head + 64 KiB, but returns early (partial head or body) without resuming: the rest of
    the pipelined request is never read and the client waits forever."""
    relay.create_hc("front", requires_client_authorization=False)
    go = asyncio.Event()

    async def answer(listener, request, body):
        if request["requestTarget"].endswith("/slow"):
            await go.wait()
        await echo(listener, request, body)

    async with RawHttpListener(relay, "front", answer) as listener:
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/slow"))
            await _until(lambda: listener.requests)  # the first request is in flight
            conn.send(b"POST /front/two HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"a" * 60000
                      + b"POST /front/three HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"b" * 40000)
            await conn.writer.drain()
            # Sync point (not an assertion): let the relay read past its 80 KiB pipelining bound.
            await _until(lambda: sum(len(getattr(c, "buf", b"")) for c in relay.relay.http.connections) > 81920)
            go.set()
            assert (await conn.response())[3] == b"GET /front/slow 0"
            assert (await conn.response())[3] == b"POST /front/two 60000"
            conn.send(b"b" * 20000)  # the rest of the third request's body
            assert (await conn.response())[3] == b"POST /front/three 60000"


async def test_pipelined_answers_wait_for_a_client_that_does_not_read(relay):
    """httpconn._done/_next start the next pipelined request whatever the client's socket
    says: a client that pipelines many requests and never reads makes the relay buffer every
    answer in memory (pause_writing is only honoured inside one streamed answer)."""
    relay.create_hc("front", requires_client_authorization=False)
    body = b"x" * 60000

    async def big(listener, request, _body):
        await listener.respond(request, body=body)

    async with RawHttpListener(relay, "front", big) as listener:
        async with Conn.connect(relay) as conn:
            conn.send(b"".join(get(f"/front/{i}") for i in range(400)))  # ~24 MB of answers; never read

            async def settled() -> None:  # sync point: until the relay stops asking the listener
                seen = -1
                while seen != len(listener.requests) and len(listener.requests) < 400:
                    seen = len(listener.requests)
                    await asyncio.sleep(0.5)

            await asyncio.wait_for(settled(), 30)
            await asyncio.sleep(0.2)
            buffered = max(c.transport.get_write_buffer_size() for c in relay.relay.http.connections)
            assert buffered < 2 << 20, f"{buffered} bytes buffered for one client that does not read"


async def test_listener_header_that_cannot_be_encoded_does_not_hang_the_client(relay):
    """A response header value with a lone surrogate (valid JSON: "\\ud800") passes
    parse_response, then HttpConnection._head's .encode() raises inside the listener socket's
    frame callback: picows drops the listener, the exchange was already marked ended so its
    failure never reaches the connection, and the client waits forever."""
    relay.create_hc("front", requires_client_authorization=False)

    async def answer(listener, request, body):
        if request["requestTarget"].endswith("/bad"):
            await listener.respond(request, body=b"hi", responseHeaders={"X-A": "\ud800"})
        else:
            await echo(listener, request, body)

    async with RawHttpListener(relay, "front", answer):
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/bad"))
            status, _, _, _ = await conn.response()  # hang guard inside: 10 s
            assert status in (200, 502)
        async with Conn.connect(relay) as conn:  # and the listener is still there for everyone else
            conn.send(get("/front/next"))
            assert (await conn.response())[3] == b"GET /front/next 0"


async def test_a_client_that_stops_reading_an_answer_streamed_on_the_control_channel_is_cut(relay):
    """Pausing the control channel for one slow client would stall the listener's other requests."""
    relay.create_hc("front", requires_client_authorization=False)
    flowing = asyncio.Event()
    async with RawHttpListener(relay, "front", flooding(flowing)):
        async with Conn.connect(relay) as slow:
            slow.send(get("/front/flood"))  # and never read
            await asyncio.wait_for(flowing.wait(), 10)
            async with Conn.connect(relay) as other:
                other.send(get("/front/other"))  # its answer queues behind the flood on the control channel
                assert (await other.response())[3] == b"GET /front/other 0"


async def test_a_slow_client_of_a_handed_over_request_is_cut_too(relay):
    """The aiohttp front end (here for a request with ``Expect``) paused the control channel instead."""
    relay.create_hc("front", requires_client_authorization=False)
    flowing = asyncio.Event()
    async with RawHttpListener(relay, "front", flooding(flowing)):
        async with Conn.connect(relay) as slow:
            slow.send(get("/front/flood", "Expect: 100-continue", "Content-Length: 0"))  # and never read
            await asyncio.wait_for(flowing.wait(), 10)
            async with Conn.connect(relay) as other:
                other.send(get("/front/other"))  # its answer queues behind the flood on the control channel
                assert (await other.response())[3] == b"GET /front/other 0"
            # The slow client's connection was cut: what it can still read ends early.
            got = 0
            while data := await asyncio.wait_for(slow.reader.read(1 << 20), 10):
                got += len(data)
            assert got < 1024 * FLOOD_CHUNK
