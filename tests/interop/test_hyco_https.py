"""hyco-https 1.4.5, Microsoft's Node HTTP listener, behind the relay; ordinary HTTP clients in front."""

from __future__ import annotations

import asyncio
import hashlib
import time
from urllib.parse import quote

import aiohttp
import pytest

from hyrelay.protocol.sas import build_token

from .nodeproc import NodeProc


async def https_listener(relay, path: str, *args: str) -> NodeProc:
    rule = relay.server.root_rule
    proc = await NodeProc.start("https-listener.js", relay.ws, path, rule.name, rule.primary_key, *args)
    await proc.wait_event("listening")
    return proc


def sender_token(relay, path: str) -> str:
    rule = relay.server.root_rule
    return build_token(f"{relay.http}/{path}", rule.name, rule.primary_key, int(time.time()) + 3600)


@pytest.fixture
async def http(relay):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def test_get_parallel_with_custom_and_repeated_headers(relay, http):
    relay.create_hc("web")
    listener = await https_listener(relay, "web")
    headers = {"ServiceBusAuthorization": sender_token(relay, "web"), "custom": "Hello"}

    async def get(i: int) -> dict:
        async with http.get(f"{relay.http}/web/items/{i}?q={i}&sb-hc-id=x&sb-hc-token=junk",
                            headers=[*headers.items(), ("X-Multi", "a"), ("X-Multi", "b")]) as r:
            assert r.status == 200
            assert r.headers["X-Echo-Method"] == "GET"
            assert "Via" in r.headers
            return await r.json()

    results = await asyncio.gather(*(get(i) for i in range(10)))
    for i, echo in enumerate(results):
        assert echo["url"] == f"/web/items/{i}?q={i}"
        assert echo["headers"]["custom"] == "Hello"
        assert echo["headers"]["x-multi"] == "a, b"
        assert "servicebusauthorization" not in echo["headers"]
    await listener.stop()


@pytest.mark.parametrize("size", [0, 12, 65536, 65537, 3 * 1024 * 1024])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_post_bodies_reach_the_listener_byte_exact(relay, http, size, chunked):
    relay.create_hc("post")
    listener = await https_listener(relay, "post")
    body = bytes(i % 251 for i in range(size))

    async def chunks():
        for start in range(0, len(body), 10000):
            yield body[start:start + 10000]

    async with http.post(f"{relay.http}/post/upload", data=chunks() if chunked else body,
                         headers={"ServiceBusAuthorization": sender_token(relay, "post")}) as r:
        assert r.status == 200
        echo = await r.json()
    assert echo["method"] == "POST"
    assert echo["bodyLen"] == size
    assert echo["bodySha256"] == hashlib.sha256(body).hexdigest()
    await listener.stop()


@pytest.mark.parametrize("size", [0, 12, 65536, 65537, 5 * 1024 * 1024])
async def test_response_bodies_small_and_over_rendezvous(relay, http, size):
    relay.create_hc("down")
    listener = await https_listener(relay, "down")
    headers = {"ServiceBusAuthorization": sender_token(relay, "down")}
    expected = bytes(i % 256 for i in range(size))
    for _ in range(3):  # several requests on one keep-alive connection after a rendezvous response
        async with http.get(f"{relay.http}/down/file?size={size}", headers=headers) as r:
            assert r.status == 200
            assert await r.read() == expected
    await listener.stop()


async def test_echo_body_writes_and_pipe(relay, http):
    relay.create_hc("echo")
    listener = await https_listener(relay, "echo")
    headers = {"ServiceBusAuthorization": sender_token(relay, "echo")}
    body = b"0123456789" * 6700  # about 66 kB, like the package's own pipe test
    for query in ("echoBody=1", "echoBody=1&writes=5", "echoBody=1&pipe=1"):
        async with http.post(f"{relay.http}/echo/?{query}", data=body, headers=headers) as r:
            assert r.status == 200, query
            assert await r.read() == body, query
    await listener.stop()


async def test_status_reason_head_and_204(relay, http):
    relay.create_hc("codes")
    listener = await https_listener(relay, "codes")
    headers = {"ServiceBusAuthorization": sender_token(relay, "codes")}
    async with http.get(f"{relay.http}/codes?status=418&reason=Short%20and%20stout", headers=headers) as r:
        assert (r.status, r.reason) == (418, "Short and stout")
        assert "Via" in r.headers
    async with http.get(f"{relay.http}/codes?status=204", headers=headers) as r:
        assert r.status == 204 and await r.read() == b""
    async with http.head(f"{relay.http}/codes", headers=headers) as r:
        assert r.status == 200 and r.headers["X-Echo-Method"] == "HEAD"
    for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
        async with http.request(method, f"{relay.http}/codes", headers=headers) as r:
            assert r.status == 200 and (await r.json())["method"] == method
    # a second request on the same connection after the 204 and the HEAD still works
    async with http.get(f"{relay.http}/codes", headers=headers) as r:
        assert r.status == 200
    await listener.stop()


async def test_token_carriers_and_anonymous_senders(relay, http):
    relay.create_hc("carriers")
    relay.create_hc("public", requires_client_authorization=False)
    listener = await https_listener(relay, "carriers")
    public = await https_listener(relay, "public")
    token = sender_token(relay, "carriers")
    async with http.get(f"{relay.http}/carriers", headers={"ServiceBusAuthorization": token}) as r:
        assert r.status == 200
    async with http.get(f"{relay.http}/carriers?sb-hc-token={quote(token)}") as r:
        assert r.status == 200
        assert (await r.json())["url"] == "/carriers"
    async with http.get(f"{relay.http}/carriers", headers={"Authorization": token}) as r:
        assert r.status == 200
        assert "authorization" not in (await r.json())["headers"]
    async with http.get(f"{relay.http}/carriers") as r:
        assert r.status == 401 and "Via" not in r.headers
        assert (await r.json())["error"]["code"] == "Unauthorized"
    # with client auth off, Authorization is the application's business and passes through
    async with http.get(f"{relay.http}/public", headers={"Authorization": "Bearer app-token"}) as r:
        assert r.status == 200
        assert (await r.json())["headers"]["authorization"] == "Bearer app-token"
    await listener.stop()
    await public.stop()


async def test_listener_token_renewal_over_http_listener(relay, http):
    relay.create_hc("renewing")
    listener = await https_listener(relay, "renewing", "--renewAfter=0.2")
    await listener.wait_event("renewSent")
    async with http.get(f"{relay.http}/renewing",
                        headers={"ServiceBusAuthorization": sender_token(relay, "renewing")}) as r:
        assert r.status == 200
    assert len(listener.all("listening")) == 1
    await listener.stop()
