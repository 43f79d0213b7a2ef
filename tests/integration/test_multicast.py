"""Multicast hybrid connections: every message reaches every listener online, and nobody replies."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from .wsutil import ws_connect


async def listeners(relay, name: str, count: int):
    return [await ws_connect(f"{relay.ws}/$hc/{name}?sb-hc-action=listen", relay.auth(name)) for _ in range(count)]


async def next_request(control) -> tuple[dict, bytes]:
    request = json.loads(await asyncio.wait_for(control.recv(), 10))["request"]
    body = await asyncio.wait_for(control.recv(), 10) if request["body"] else b""
    return request, body


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_http_publish_reaches_every_listener(relay, http):
    relay.store.create_hc("hyrelay", "news", multicast=True)
    relay.relay.refresh()
    controls = await listeners(relay, "news", 3)
    async with http.post(f"{relay.http}/news/sports?x=1", data=b'{"score":3}', headers=relay.auth("news")) as r:
        assert r.status == 202 and (await r.json()) == {"listeners": 3}
        assert "Via" not in r.headers
    for control in controls:
        request, body = await next_request(control)
        assert request["method"] == "POST" and request["requestTarget"] == "/news/sports?x=1"
        assert body == b'{"score":3}'
        # a listener that answers anyway is drained, and its channel stays usable
        await control.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 200, "body": True}}))
        await control.send(b"ignored")
    async with http.post(f"{relay.http}/news", data=b"again", headers=relay.auth("news")) as r:
        assert (await r.json()) == {"listeners": 3}
    for control in controls:
        assert (await next_request(control))[1] == b"again"
        await control.close()


async def test_publish_with_nobody_listening_is_not_an_error(relay, http):
    relay.store.create_hc("hyrelay", "void", multicast=True)
    relay.relay.refresh()
    async with http.post(f"{relay.http}/void", data=b"hello?", headers=relay.auth("void")) as r:
        assert r.status == 202 and (await r.json()) == {"listeners": 0}


async def test_publish_needs_send_and_a_bounded_body(relay, http):
    relay.store.create_hc("hyrelay", "guarded", multicast=True)
    relay.relay.refresh()
    controls = await listeners(relay, "guarded", 1)
    async with http.post(f"{relay.http}/guarded", data=b"x") as r:
        assert r.status == 401
    async with http.post(f"{relay.http}/guarded", data=b"x" * 70000, headers=relay.auth("guarded")) as r:
        assert r.status == 413
    async with http.post(f"{relay.http}/guarded", data=b"fine", headers=relay.auth("guarded")) as r:
        assert (await r.json()) == {"listeners": 1}
    assert (await next_request(controls[0]))[1] == b"fine"
    await controls[0].close()


async def test_websocket_publisher_fans_out_and_gets_acks(relay):
    relay.store.create_hc("hyrelay", "ticker", multicast=True)
    relay.relay.refresh()
    controls = await listeners(relay, "ticker", 3)
    async with ws_connect(f"{relay.ws}/$hc/ticker?sb-hc-action=connect", relay.auth("ticker")) as publisher:
        for i in range(5):
            await publisher.send(f"tick {i}")
            ack = json.loads(await asyncio.wait_for(publisher.recv(), 10))
            assert ack == {"published": {"seq": i + 1, "listeners": 3}}
        await publisher.send(b"\x00\x01")
        assert json.loads(await publisher.recv())["published"]["listeners"] == 3
    for control in controls:
        bodies = [(await next_request(control))[1] for _ in range(6)]
        assert bodies == [f"tick {i}".encode() for i in range(5)] + [b"\x00\x01"]
        await control.close()


async def test_a_stalled_listener_holds_back_the_publisher_instead_of_growing_buffers(relay):
    relay.store.create_hc("hyrelay", "firehose", multicast=True)
    relay.relay.refresh()
    fast, slow = await listeners(relay, "firehose", 2)
    slow.transport.pause_reading()  # this listener stops reading its control channel

    async def drain_fast() -> None:
        while True:
            await next_request(fast)

    reader = asyncio.create_task(drain_fast())
    payload = b"e" * 60000
    async with ws_connect(f"{relay.ws}/$hc/firehose", relay.auth("firehose"), ping_interval=None) as publisher:
        acked = 0

        async def publish() -> None:
            nonlocal acked
            for _ in range(2000):  # 120 MB if nothing pushed back
                await publisher.send(payload)
                await publisher.recv()
                acked += 1

        task = asyncio.create_task(publish())
        previous = -1
        while previous != acked:  # until the relay stops taking messages from the publisher
            previous = acked
            await asyncio.sleep(0.5)
        assert acked < 2000, "the relay kept accepting messages for a listener that reads nothing"
        channel = [c for c in relay.relay.router.listeners("hyrelay/firehose") if c.paused]
        assert channel and channel[0].buffered < 64 << 20
        slow.transport.resume_reading()
        task.cancel()
    reader.cancel()
