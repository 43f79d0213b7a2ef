"""The relay's WebSocket paths against real sockets: happy paths and every bad input of issue #2."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hyrelay.protocol.sas import build_token

from .wsutil import EchoListener, next_accept, opened, refused, ws_connect


async def listen(relay, name: str, headers=None, query: str = ""):
    return await ws_connect(f"{relay.ws}/$hc/{name}?sb-hc-action=listen{query}",
                            relay.auth(name) if headers is None else headers)


async def echo_pair(relay, name: str, **connect_kwargs):
    listener = EchoListener(await listen(relay, name))
    sender = await ws_connect(f"{relay.ws}/$hc/{name}?sb-hc-action=connect", relay.auth(name), **connect_kwargs)
    return listener, sender


# -- happy paths --------------------------------------------------------------------------------

async def test_text_and_binary_echo(relay):
    relay.create_hc("echo")
    listener, sender = await echo_pair(relay, "echo")
    await sender.send("hello")
    assert await sender.recv() == "hello"
    await sender.send(b"\x00\x01\xff")
    assert await sender.recv() == b"\x00\x01\xff"
    await sender.close()
    await listener.close()


async def test_fragments_stream_through_with_fin_bits(relay):
    relay.create_hc("frag")
    listener, sender = await echo_pair(relay, "frag")
    chunks = [bytes([i]) * 65536 for i in range(80)]  # 5 MiB in 80 fragments

    async def produce():
        for chunk in chunks:
            yield chunk

    await sender.send(produce())
    received = [f async for f in sender.recv_streaming()]
    assert len(received) > 1, "the relay reassembled a fragmented message"
    assert b"".join(received) == b"".join(chunks)
    await sender.close()
    await listener.close()


async def test_suffix_query_headers_and_subprotocol_reach_listener(relay):
    relay.create_hc("a/b")
    control = await listen(relay, "a/b")
    token = relay.token("a/b")
    sender_task = asyncio.create_task(opened(
        f"{relay.ws}/$hc/a/b/room7?x=1&sb-hc-id=my-conn&sb-hc-token={__import__('urllib.parse').parse.quote(token)}",
        {"X-Custom": "Hello"}, subprotocols=["chat.v2", "chat.v1"]))
    accept = await next_accept(control)
    assert accept["id"] == "my-conn"
    assert "/$hc/a/b/room7?x=1&sb-hc-action=accept" in accept["address"]
    headers = accept["connectHeaders"]
    assert headers["X-Custom"] == "Hello"
    assert headers["Sec-WebSocket-Key"]
    assert "ServiceBusAuthorization" not in headers and "sb-hc-token" not in accept["address"]
    assert accept["remoteEndpoint"]["address"] == "127.0.0.1"
    async with ws_connect(accept["address"], subprotocols=["chat.v1"]) as rendezvous:
        sender = await sender_task
        assert sender.subprotocol == "chat.v1"
        assert rendezvous.subprotocol == "chat.v1"
        await sender.send("x")
        assert await rendezvous.recv() == "x"
        await sender.close()
    await control.close()


async def test_missing_action_means_connect(relay):
    relay.create_hc("noaction")
    listener = EchoListener(await listen(relay, "noaction"))
    async with ws_connect(f"{relay.ws}/$hc/noaction", relay.auth("noaction")) as sender:
        await sender.send("ping")
        assert await sender.recv() == "ping"
    await listener.close()


@pytest.mark.parametrize("code,reason", [(1000, "done"), (4001, "bye"), (1011, "oops")])
async def test_close_code_and_reason_pass_through(relay, code, reason):
    relay.create_hc("closing")
    control = await listen(relay, "closing")
    sender_task = asyncio.create_task(opened(f"{relay.ws}/$hc/closing", relay.auth("closing")))
    accept = await next_accept(control)
    rendezvous = await ws_connect(accept["address"])
    sender = await sender_task
    await sender.close(code, reason)
    with pytest.raises(ConnectionClosed):
        await rendezvous.recv()
    assert (rendezvous.close_code, rendezvous.close_reason) == (code, reason)
    # and the other way round
    sender_task = asyncio.create_task(opened(f"{relay.ws}/$hc/closing", relay.auth("closing")))
    accept = await next_accept(control)
    rendezvous = await ws_connect(accept["address"])
    sender = await sender_task
    await rendezvous.close(code, reason)
    with pytest.raises(ConnectionClosed):
        await sender.recv()
    assert (sender.close_code, sender.close_reason) == (code, reason)
    await control.close()


async def test_anonymous_sender_when_client_auth_is_off(relay):
    relay.create_hc("open", requires_client_authorization=False)
    listener = EchoListener(await listen(relay, "open"))
    async with ws_connect(f"{relay.ws}/$hc/open?sb-hc-action=connect",
                          {"ServiceBusAuthorization": "garbage"}) as sender:
        await sender.send("anon")
        assert await sender.recv() == "anon"
    await listener.close()
    # the listener still needs a token
    assert (await refused(f"{relay.ws}/$hc/open?sb-hc-action=listen"))[0] == 401


async def test_token_in_query_and_either_key(relay):
    from urllib.parse import quote
    relay.create_hc("q")
    rule = relay.server.root_rule
    listen_token = relay.token("q", key=rule.secondary_key)
    control = await ws_connect(f"{relay.ws}/$hc/q?sb-hc-action=listen&sb-hc-token={quote(listen_token)}")
    listener = EchoListener(control)
    async with ws_connect(f"{relay.ws}/$hc/q?sb-hc-action=connect&sb-hc-token={quote(relay.token('q'))}") as s:
        await s.send("via query")
        assert await s.recv() == "via query"
    await listener.close()


async def test_several_listeners_share_and_allowed_listeners_filter(relay):
    relay.create_hc("multi")
    a = EchoListener(await listen(relay, "multi", query="&sb-hc-id=aaaaaaaa-0000-0000-0000-000000000001"))
    b = EchoListener(await listen(relay, "multi", query="&sb-hc-id=bbbbbbbb-0000-0000-0000-000000000002"))
    for _ in range(40):
        async with ws_connect(f"{relay.ws}/$hc/multi", relay.auth("multi")) as s:
            await s.send("x")
            await s.recv()
    assert a.accepts and b.accepts, "random choice never picked one of two listeners in 40 tries"
    before = len(b.accepts)
    headers = {**relay.auth("multi"), "Microsoft-Relay-AllowedListeners": "bbbbbbbb-0000-0000-0000-000000000002"}
    for _ in range(5):
        async with ws_connect(f"{relay.ws}/$hc/multi", headers) as s:
            await s.send("x")
            await s.recv()
    assert len(b.accepts) == before + 5
    headers = {**relay.auth("multi"), "Microsoft-Relay-DisallowedListeners":
               "aaaaaaaa-0000-0000-0000-000000000001,bbbbbbbb-0000-0000-0000-000000000002"}
    status, reason = await refused(f"{relay.ws}/$hc/multi", headers)
    assert status == 404 and "AllowedListeners/DisallowedListeners" in reason
    await a.close()
    await b.close()


async def test_hundred_concurrent_connections(relay):
    relay.create_hc("many")
    listener = EchoListener(await listen(relay, "many"))

    async def one(i: int) -> str:
        async with ws_connect(f"{relay.ws}/$hc/many", relay.auth("many")) as s:
            await s.send(f"m{i}")
            return await s.recv()

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 60)
    assert results == [f"m{i}" for i in range(100)]
    await listener.close()


# -- listener rejects ---------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["sb-hc-", ""])
async def test_listener_reject_reaches_sender_and_listener_gets_410(relay, prefix):
    relay.create_hc("rej")
    control = await listen(relay, "rej")
    sender_task = asyncio.create_task(refused(f"{relay.ws}/$hc/rej", relay.auth("rej")))
    accept = await next_accept(control)
    status, _ = await refused(accept["address"] + f"&{prefix}statusCode=401&{prefix}statusDescription=go%20away")
    assert status == 410
    status, reason = await sender_task
    assert status == 401 and reason.startswith("go away") and "TrackingId:" in reason
    await control.close()


# -- bad tokens ---------------------------------------------------------------------------------

async def test_bad_tokens_get_401_or_403_with_tracking_id(relay):
    relay.create_hc("secure")
    relay.create_hc("other")
    listen_only = relay.create_rule("listenonly", ("Listen",))
    control = await listen(relay, "secure")
    uri = f"{relay.ws}/$hc/secure?sb-hc-action=connect"
    rule = relay.server.root_rule
    cases = {
        "forged": (401, relay.token("secure", key="not-the-key")),
        "expired": (401, relay.token("secure", ttl=-3600)),
        "other hc": (403, relay.token("other")),
        "no Send right": (403, relay.token("secure", rule=listen_only)),
        "malformed": (401, "SharedAccessSignature sr=abc&sig=&se=notanumber"),
        "jwt": (401, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
        "unknown key name": (401, build_token(uri, "nosuchrule", rule.primary_key, int(time.time()) + 60)),
        "hyco prefix is no grant for hyco2": (403, relay.token("secur")),
    }
    for label, (expected, token) in cases.items():
        status, reason = await refused(uri, {"ServiceBusAuthorization": token})
        assert status == expected, label
        assert "TrackingId:" in reason, label
    status, reason = await refused(uri)
    assert status == 401 and "no token" in reason
    # the listener was never disturbed
    listener = EchoListener(control)
    async with ws_connect(uri, relay.auth("secure")) as s:
        await s.send("still here")
        assert await s.recv() == "still here"
    await listener.close()


async def test_listen_needs_listen_right(relay):
    relay.create_hc("lr")
    send_only = relay.create_rule("sendonly", ("Send",))
    status, reason = await refused(f"{relay.ws}/$hc/lr?sb-hc-action=listen", relay.auth("lr", rule=send_only))
    assert status == 403 and "Listen" in reason


async def test_entity_rule_only_grants_its_own_hc(relay):
    relay.create_hc("mine")
    relay.create_hc("yours")
    rule = relay.create_rule("entityrule", ("Listen", "Send"), entity="mine")
    (await listen(relay, "mine", relay.auth("mine", rule=rule))).close
    status, _ = await refused(f"{relay.ws}/$hc/yours?sb-hc-action=listen", relay.auth("yours", rule=rule))
    assert status == 401  # the rule does not exist for 'yours'


# -- unknown names, actions and malformed requests -----------------------------------------------

async def test_unknown_hc_no_listener_and_unknown_action(relay):
    relay.create_hc("lonely")
    status, reason = await refused(f"{relay.ws}/$hc/nope?sb-hc-action=connect", relay.auth("nope"))
    assert status == 404 and reason.startswith("Endpoint does not exist") and "TrackingId:" in reason
    status, reason = await refused(f"{relay.ws}/$hc/lonely?sb-hc-action=connect", relay.auth("lonely"))
    assert status == 404 and "No listeners" in reason
    status, reason = await refused(f"{relay.ws}/$hc/lonely?sb-hc-action=dance", relay.auth("lonely"))
    assert status == 400 and "Unknown sb-hc-action" in reason


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def test_oversized_handshake_headers_get_431(relay):
    relay.create_hc("big")
    request = (b"GET /$hc/big?sb-hc-action=connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               b"X-Padding: " + b"a" * 40000 + b"\r\n\r\n")
    reply = await asyncio.to_thread(raw_request, relay.port, request)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"TrackingId:" in reply.split(b"\r\n")[0]


async def test_plain_get_on_hc_endpoint_and_garbage_request(relay):
    reply = await asyncio.to_thread(raw_request, relay.port, b"GET /$hc/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b"WebSocket" in reply
    reply = await asyncio.to_thread(raw_request, relay.port, b"\x16\x03\x01garbage\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")


# -- rendezvous addresses -----------------------------------------------------------------------

async def test_rendezvous_address_is_single_use_and_unguessable(relay):
    relay.create_hc("once")
    control = await listen(relay, "once")
    sender_task = asyncio.create_task(opened(f"{relay.ws}/$hc/once", relay.auth("once")))
    accept = await next_accept(control)
    secret = accept["address"].split("sb-hc-rendezvous=")[1].split("&")[0]
    assert len(secret) >= 32  # 192 bits in URL-safe base64
    first = await ws_connect(accept["address"])
    sender = await sender_task
    status, reason = await refused(accept["address"])
    assert status == 403 and "not valid" in reason
    guessed = accept["address"].replace(secret, "A" * len(secret))
    assert (await refused(guessed))[0] == 403
    missing = accept["address"].split("&sb-hc-rendezvous=")[0]
    assert (await refused(missing))[0] == 403
    await sender.close()
    await first.close()
    await control.close()


@pytest.mark.parametrize("relay_config", [{"accept_timeout": 0.5}])
async def test_listener_that_never_accepts_gives_504_then_address_expires(relay):
    relay.create_hc("slow")
    control = await listen(relay, "slow")
    sender_task = asyncio.create_task(refused(f"{relay.ws}/$hc/slow", relay.auth("slow")))
    accept = await next_accept(control)
    status, reason = await asyncio.wait_for(sender_task, 10)
    assert status == 504 and "did not accept" in reason
    assert (await refused(accept["address"]))[0] == 403
    assert relay.relay.router.pending_count == 0
    await control.close()


# -- listener limits and control-channel abuse ----------------------------------------------------

@pytest.mark.parametrize("relay_config", [{"max_listeners": 2}])
async def test_listener_over_the_limit_gets_403(relay):
    relay.create_hc("full")
    first, second = await listen(relay, "full"), await listen(relay, "full")
    status, reason = await refused(f"{relay.ws}/$hc/full?sb-hc-action=listen", relay.auth("full"))
    assert status == 403 and "MaximumListenersPerEndpoint" in reason
    await first.close()
    for _ in range(100):  # the freed slot becomes available once the relay saw the close
        try:
            third = await listen(relay, "full")
            break
        except InvalidStatus:
            await asyncio.sleep(0.05)
    await third.close()
    await second.close()


@pytest.mark.parametrize("bad", [b"\x01\x02binary", "not json", "[1,2]", '{"renewToken":{}}'])
async def test_control_channel_garbage_closes_with_1008(relay, bad):
    relay.create_hc("strict")
    bystander = EchoListener(await listen(relay, "strict"))
    offender = await listen(relay, "strict")
    await offender.send(bad)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(offender.recv(), 10)
    assert offender.close_code == 1008 and "TrackingId:" in offender.close_reason
    for _ in range(3):  # the other listener keeps serving
        async with ws_connect(f"{relay.ws}/$hc/strict", relay.auth("strict")) as s:
            await s.send("ok")
            assert await s.recv() == "ok"
    await bystander.close()


async def test_control_channel_ignores_unknown_commands_and_empty_binary(relay):
    relay.create_hc("lenient")
    control = await listen(relay, "lenient")
    await control.send('{"injectFault":{"delay":"00:01:00"}}')
    await control.send(b"")
    listener = EchoListener(control)
    async with ws_connect(f"{relay.ws}/$hc/lenient", relay.auth("lenient")) as s:
        await s.send("fine")
        assert await s.recv() == "fine"
    await listener.close()


# -- token renewal and expiry ---------------------------------------------------------------------

@pytest.mark.parametrize("relay_config", [{"token_grace": 0, "clock_skew": 0}])
async def test_expired_listener_token_closes_control_channel_with_1008(relay):
    relay.create_hc("short")
    control = await listen(relay, "short", relay.auth("short", ttl=1))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(control.recv(), 10)
    assert control.close_code == 1008 and "expired" in control.close_reason


@pytest.mark.parametrize("relay_config", [{"token_grace": 0, "clock_skew": 0}])
async def test_renew_token_extends_and_bad_renewal_closes(relay):
    relay.create_hc("renew")
    control = await listen(relay, "renew", relay.auth("renew", ttl=2))
    await control.send(json.dumps({"renewToken": {"token": relay.token("renew", ttl=3600)}}))
    await asyncio.sleep(3)  # past the first token's expiry; not a timing assertion, just waiting it out
    listener = EchoListener(control)
    async with ws_connect(f"{relay.ws}/$hc/renew", relay.auth("renew")) as s:
        await s.send("alive")
        assert await s.recv() == "alive"
    listener._task.cancel()
    await control.send(json.dumps({"renewToken": {"token": relay.token("renew", key="forged")}}))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(control.recv(), 10)
    assert control.close_code == 1008 and "invalid signature" in control.close_reason


# -- drops mid-stream -----------------------------------------------------------------------------

async def _connected_pair(relay, name, **kwargs):
    control = await listen(relay, name)
    sender_task = asyncio.create_task(opened(f"{relay.ws}/$hc/{name}", relay.auth(name), **kwargs))
    accept = await next_accept(control)
    rendezvous = await ws_connect(accept["address"], **kwargs)
    return control, await sender_task, rendezvous


def _abort(ws) -> None:
    ws.transport.abort()  # TCP reset, no Close frame


async def test_sender_drop_closes_listener_side_promptly(relay):
    relay.create_hc("drop")
    control, sender, rendezvous = await _connected_pair(relay, "drop")
    await sender.send(b"x" * 100000)
    assert await rendezvous.recv() == b"x" * 100000
    _abort(sender)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(rendezvous.recv(), 10)
    assert rendezvous.close_code == 1001
    await _no_leaks(relay)
    await control.close()


async def test_listener_drop_closes_sender_side_promptly(relay):
    relay.create_hc("drop2")
    control, sender, rendezvous = await _connected_pair(relay, "drop2")
    _abort(rendezvous)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(sender.recv(), 10)
    assert sender.close_code == 1001
    await _no_leaks(relay)
    await control.close()


async def _no_leaks(relay) -> None:
    for _ in range(100):
        if not any(relay.relay.counters.active.values()) and relay.relay.router.pending_count == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"relay still holds connections: {relay.relay.counters.active}")


async def test_backpressure_bounds_what_the_relay_buffers(relay):
    """A listener that stops reading must stall the sender, not grow the relay's buffers."""
    relay.create_hc("slowreader")
    # keep-alive pings cannot cross a deliberately stalled socket; switch them off
    control, sender, rendezvous = await _connected_pair(relay, "slowreader", ping_interval=None)
    rendezvous.transport.pause_reading()
    chunk = b"z" * (1 << 20)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while sent < 256:
            await sender.send(chunk)
            sent += 1

    task = asyncio.create_task(flood())
    previous = -1
    while previous != sent:  # wait until the sender is stuck
        previous = sent
        await asyncio.sleep(0.5)
    assert sent < 256, "the relay absorbed 256 MiB for a listener that reads nothing"
    end = next(iter(relay.relay.counters.active["hyrelay/slowreader"]))
    buffered = end.peer.transport.underlying_transport.get_write_buffer_size()
    assert buffered < 8 << 20
    rendezvous.transport.resume_reading()
    received = 0
    while received < 256:  # everything the sender was held back from still arrives
        await asyncio.wait_for(rendezvous.recv(), 60)
        received += 1
    await asyncio.wait_for(task, 60)
    await sender.close()
    await control.close()


async def test_deleting_hc_closes_listeners_with_1001(relay):
    relay.create_hc("doomed")
    control = await listen(relay, "doomed")
    relay.store.delete_hc("hyrelay", "doomed")
    relay.relay.refresh()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(control.recv(), 10)
    assert control.close_code == 1001


async def test_health_endpoint(relay):
    import urllib.request
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{relay.http}/$health", timeout=10).read())
    assert json.loads(body)["status"] == "ok"


async def test_large_frames_arrive_intact_when_the_receiver_lags(relay):
    """Frames over picows' copy limit must not be sent later from a reused read buffer."""
    import hashlib
    # The hazard is uvloop's: it keeps unsent buffers by reference (conftest runs tests on it).
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    relay.create_hc("intact")
    control, sender, rendezvous = await _connected_pair(relay, "intact", ping_interval=None)
    payloads = [hashlib.sha256(bytes([i])).digest() * (40000 + i * 997) for i in range(40)]

    async def push() -> None:
        for payload in payloads:
            await sender.send(payload)

    rendezvous.transport.pause_reading()  # fill the relay's outgoing socket so tails wait in uvloop
    task = asyncio.create_task(push())
    await asyncio.sleep(0.3)
    rendezvous.transport.resume_reading()
    received = [await asyncio.wait_for(rendezvous.recv(), 30) for _ in payloads]
    await task
    bad = [i for i, (got, want) in enumerate(zip(received, payloads)) if got != want]
    assert not bad, f"{len(bad)} of {len(payloads)} messages arrived corrupted"
    await sender.close()
    await control.close()


@pytest.mark.parametrize("relay_config", [{"head_timeout": 0.5}])
async def test_a_request_head_that_never_ends_gets_408(relay):
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET /$hc/x?sb-hc-action=connect HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    reply = await asyncio.wait_for(reader.read(), 10)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"TrackingId:" in reply
    writer.close()
    # a complete request on another connection is unaffected
    body = await asyncio.to_thread(raw_request, relay.port, b"GET /$health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert body.startswith(b"HTTP/1.1 200")
