"""Review of the msgspec fast paths and the 4 MiB cut (commits after 460c84e).

Every test here fails on the code as reviewed. Real sockets on 127.0.0.1; timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .test_http_relay import RawHttpListener


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def test_deeply_nested_response_is_a_protocol_violation(relay, http):
    """decode_response lets msgspec's RecursionError escape (it catches only DecodeError and
    UnicodeError); the tolerant path turned deep nesting into "not valid JSON" and closed the
    channel with 1008, so the client got a 502 at once."""
    relay.create_hc("deep", requires_client_authorization=False)

    async def answer(listener, request, body):
        nested = "[" * 5000 + "]" * 5000  # 10 KB, well under the 64 KiB control message limit
        await listener.control.send('{"response":{"requestId":"%s","statusCode":200,"x":%s}}'
                                    % (request["id"], nested))

    async with RawHttpListener(relay, "deep", answer) as listener:
        async with http.get(f"{relay.http}/deep/x", timeout=aiohttp.ClientTimeout(total=20)) as r:
            assert r.status == 502
        await asyncio.wait_for(listener._task, 10)
        assert listener.control.close_code == 1008


async def test_invalid_utf8_outside_the_typed_fields_closes_with_1007(relay, http):
    """msgspec does not validate UTF-8 in the strings of fields it skips: the fast path relays a
    response whose text frame is not UTF-8, which the old path (data.decode()) closed with 1007."""
    relay.create_hc("mangled2", requires_client_authorization=False)

    async def answer(listener, request, body):
        await listener.control.send(b'{"response":{"requestId":"' + request["id"].encode()
                                    + b'","statusCode":200,"x":"\xff"}}', text=True)

    async with RawHttpListener(relay, "mangled2", answer) as listener:
        async with http.get(f"{relay.http}/mangled2/x") as r:
            assert r.status == 502
        await asyncio.wait_for(listener._task, 10)
        assert listener.control.close_code == 1007


async def test_a_client_cut_for_leaving_4_mib_unread_is_dropped_at_once(relay):
    """The aiohttp front end's cut only queued an error, behind a writer stuck on the client's full
    socket: a client that never reads kept its connection, the handler and the exchange for good.
    (Added after the review's suspicion; it fails without ResponseQueue.abort_client.)"""
    from .test_http_front import Conn, get
    from .test_review_front import flooding

    relay.create_hc("front", requires_client_authorization=False)
    flowing = asyncio.Event()
    async with RawHttpListener(relay, "front", flooding(flowing, paced=True)):
        async with Conn.connect(relay) as slow:
            slow.send(get("/front/flood", "Expect: 100-continue", "Content-Length: 0"))  # handed over; never read
            await asyncio.wait_for(flowing.wait(), 10)

            async def exchange_released() -> None:
                while relay.relay.router.pending_count:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(exchange_released(), 10)  # hang guard: the cut let everything go
