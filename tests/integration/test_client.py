"""hyrelay.client against a real relay on 127.0.0.1: listener, sender, reconnect, token renewal.

Real sockets, no mocks. Timeouts are hang guards only; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyrelay.client import (AcceptRequest, BadRequest, ConnectionClosed, EndpointNotFound, HybridConnection,
                            HybridConnectionClient, HybridConnectionListener, ListenerEvent, RelayError,
                            SasKeyTokenProvider, SasTokenProvider, Unauthorized)
from hyrelay.protocol.sas import build_token
from hyrelay.server.app import RelayServer
from hyrelay.server.config import RelayConfig

GUARD = 20.0  # seconds; only ever a hang guard


# -- fixtures and helpers -----------------------------------------------------------------------
@dataclass
class Env:
    """A running relay with one hybrid connection that requires client authorization."""

    srv: RelayServer
    data_dir: Path
    name: str = "echo"

    @property
    def cs(self) -> str:
        return self.srv.connection_string()

    @property
    def address(self) -> str:
        return f"ws://127.0.0.1:{self.srv.port}/$hc/{self.name}"

    @property
    def hc_key(self) -> str:
        return f"hyrelay/{self.name.lower()}"

    def channels(self) -> list:
        return self.srv.relay.router.listeners(self.hc_key)

    def listener(self, **kwargs) -> HybridConnectionListener:
        kwargs.setdefault("reconnect_min", 0.05)
        kwargs.setdefault("reconnect_max", 0.5)
        return HybridConnectionListener.from_connection_string(self.cs, entity=self.name, **kwargs)

    def client(self, **kwargs) -> HybridConnectionClient:
        return HybridConnectionClient.from_connection_string(self.cs, entity=self.name, **kwargs)


async def start_relay(data_dir: Path, port: int = 0, **overrides) -> RelayServer:
    srv = RelayServer(RelayConfig(host="127.0.0.1", port=port, data_dir=data_dir, **overrides))
    await srv.start()
    return srv


def make_env_fixture(name: str, **config):
    @pytest.fixture(name=name)
    async def fixture(tmp_path: Path) -> AsyncIterator[Env]:
        data_dir = tmp_path / "data"
        srv = await start_relay(data_dir, **config)
        env = Env(srv, data_dir)
        srv.store.create_hc("hyrelay", env.name, requires_client_authorization=True)
        srv.relay.refresh()
        try:
            yield env
        finally:
            await env.srv.stop()
    return fixture


env = make_env_fixture("env")
strict_env = make_env_fixture("strict_env", token_grace=0, clock_skew=0)


class Events:
    """Records a listener's events and lets a test wait for the n-th one of a kind."""

    def __init__(self, listener: HybridConnectionListener) -> None:
        self.seen: list[ListenerEvent] = []
        self._changed = asyncio.Event()
        for name in ("connecting", "online", "offline"):
            listener.on(name, self._record)

    def _record(self, event: ListenerEvent) -> None:
        self.seen.append(event)
        self._changed.set()

    def of(self, name: str) -> list[ListenerEvent]:
        return [e for e in self.seen if e.name == name]

    async def wait(self, name: str, count: int = 1) -> ListenerEvent:
        async with asyncio.timeout(GUARD):
            while len(self.of(name)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(name)[count - 1]


@contextlib.asynccontextmanager
async def serving(listener: HybridConnectionListener,
                  handler: Callable[[HybridConnection], Awaitable[None]]) -> AsyncIterator[list[HybridConnection]]:
    """Run *handler* for every accepted connection in its own task, while the block runs."""
    accepted: list[HybridConnection] = []
    tasks: set[asyncio.Task] = set()

    async def loop() -> None:
        async for connection in listener:
            accepted.append(connection)
            task = asyncio.create_task(handler(connection))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    runner = asyncio.create_task(loop())
    try:
        yield accepted
    finally:
        runner.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(runner, *tasks, return_exceptions=True)


async def echo(connection: HybridConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in connection:
            await connection.send(message)


# -- data ---------------------------------------------------------------------------------------
async def test_text_and_binary_echo(env: Env) -> None:
    async with env.listener() as listener, serving(listener, echo):
        assert listener.is_online
        async with await env.client().connect() as conn:
            async with asyncio.timeout(GUARD):
                await conn.send("hello, relay")
                assert await conn.recv() == "hello, relay"
                await conn.send(b"\x00\x01\xffbinary")
                assert await conn.recv() == b"\x00\x01\xffbinary"
                await conn.send("")
                assert await conn.recv() == ""
        assert len(env.channels()) == 1
    # close() ends the control channel, and the relay forgets the listener.
    await wait_until(lambda: env.channels() == [])


async def wait_until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_5mib_streamed_in_64kib_fragments_both_ways(env: Env) -> None:
    fragment = 64 * 1024
    payload = os.urandom(5 * 1024 * 1024)
    chunks = [payload[i:i + fragment] for i in range(0, len(payload), fragment)]

    async def stream_back(connection: HybridConnection) -> None:
        received = [f async for f in connection.recv_stream()]
        # Send back the data fragments we got, so the sender can check the return trip too.
        await connection.send_stream(f for f in received if f)
        await connection.send(json.dumps([len(f) for f in received]))

    async with env.listener() as listener, serving(listener, stream_back):
        async with await env.client().connect() as conn:
            async with asyncio.timeout(GUARD * 3):

                async def produce():
                    for chunk in chunks:
                        yield chunk

                await conn.send_stream(produce())
                back = [f async for f in conn.recv_stream()]
                listener_sizes = await conn.recv()

    # Each 64 KiB chunk arrived as its own fragment, both ways. websockets closes a streamed
    # message with an empty final frame, so the last fragment may be empty.
    sizes = json.loads(listener_sizes)
    assert [n for n in sizes if n] == [fragment] * 80 and sizes[80:] in ([], [0])
    data = [f for f in back if f]
    assert len(data) == len(chunks) == 80 and len(back) <= 81
    assert all(isinstance(f, bytes) and len(f) == fragment for f in data)
    assert b"".join(back) == payload


async def test_many_concurrent_connections_through_one_listener(env: Env) -> None:
    async with env.listener() as listener, serving(listener, echo) as accepted:
        client = env.client()

        async def one(i: int) -> str:
            async with await client.connect(connection_id=f"conn-{i}") as conn:
                await conn.send(f"message {i}")
                return await conn.recv()

        async with asyncio.timeout(GUARD * 3):
            replies = await asyncio.gather(*(one(i) for i in range(50)))
    assert replies == [f"message {i}" for i in range(50)]
    assert sorted(c.id for c in accepted) == sorted(f"conn-{i}" for i in range(50))


async def test_close_code_and_reason_pass_both_ways(env: Env) -> None:
    closed: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

    async def handler(connection: HybridConnection) -> None:
        first = await connection.recv()
        if first == "you close":
            await connection.close(4002, "later")
            return
        try:
            await connection.recv()
        except ConnectionClosed as exc:
            assert (exc.code, exc.reason) == (connection.close_code, connection.close_reason)
            await closed.put((exc.code, exc.reason))

    async with env.listener() as listener, serving(listener, handler):
        client = env.client()
        async with asyncio.timeout(GUARD):
            conn = await client.connect()
            await conn.send("I close")
            await conn.close(4001, "bye")
            assert await closed.get() == (4001, "bye")
            assert conn.close_code == 4001 and conn.close_reason == "bye"

            conn = await client.connect()
            await conn.send("you close")
            with pytest.raises(ConnectionClosed) as info:
                await conn.recv()
            assert (info.value.code, info.value.reason) == (4002, "later")
            assert (conn.close_code, conn.close_reason) == (4002, "later")


# -- accept decisions ---------------------------------------------------------------------------
async def test_subprotocol_chosen_by_accept_handler_reaches_sender(env: Env) -> None:
    def choose(request: AcceptRequest) -> bool:
        if "b" in request.subprotocols:
            request.subprotocol = "b"
        return True

    async with env.listener(accept_handler=choose) as listener, serving(listener, echo) as accepted:
        client = env.client()
        async with asyncio.timeout(GUARD):
            async with await client.connect(subprotocols=["a", "b"]) as conn:
                assert conn.subprotocol == "b"
                await conn.send("x")
                assert await conn.recv() == "x"
            assert accepted[-1].subprotocol == "b"
            async with await client.connect(subprotocols=["x", "y"]) as conn:
                assert conn.subprotocol == "x"  # the default: the first one offered
            async with await client.connect() as conn:
                assert conn.subprotocol is None


async def test_reject_status_and_description_reach_sender(env: Env) -> None:
    async def handler(request: AcceptRequest) -> bool:
        if request.query_params.get("who") == "teapot":
            request.reject(418, "short and stout")
        else:
            request.reject(401, "go away")
        return True

    async with env.listener(accept_handler=handler):
        client = env.client()
        async with asyncio.timeout(GUARD):
            with pytest.raises(Unauthorized) as info:
                await client.connect()
            assert info.value.status == 401
            assert "go away" in str(info.value) and "TrackingId:" in str(info.value)

            with pytest.raises(RelayError) as info:
                await client.connect(query={"who": "teapot"})
            assert type(info.value) is RelayError and info.value.status == 418
            assert "short and stout" in str(info.value)


async def test_accept_handler_returning_false_gives_400(env: Env) -> None:
    async with env.listener(accept_handler=lambda request: False):
        with pytest.raises(BadRequest) as info:
            async with asyncio.timeout(GUARD):
                await env.client().connect()
    assert info.value.status == 400
    assert "Rejected by user code" in str(info.value)


async def test_accept_handler_that_raises_gives_502(env: Env) -> None:
    def broken(request: AcceptRequest) -> bool:
        raise RuntimeError("handler bug")

    async with env.listener(accept_handler=broken):
        with pytest.raises(RelayError) as info:
            async with asyncio.timeout(GUARD):
                await env.client().connect()
    assert info.value.status == 502
    assert "AcceptHandler threw an exception" in str(info.value)


async def test_path_suffix_query_and_headers_reach_listener(env: Env) -> None:
    requests: list[AcceptRequest] = []

    def record(request: AcceptRequest) -> bool:
        requests.append(request)
        return True

    async with env.listener(accept_handler=record) as listener, serving(listener, echo) as accepted:
        client = env.client()
        async with asyncio.timeout(GUARD):
            async with await client.connect(path_suffix="orders/42", query={"a": "1", "b": "two words"},
                                            headers={"X-Custom": "value"}, connection_id="abc-1"):
                pass
            async with await client.connect(query="sb-hc-foo=bar&c=3&sb-hc-x=&d"):
                pass
            # A token in the query must not reach the listener either.
            async with await env.client(token_in_query=True).connect(path_suffix="/q", query={"e": "5"}):
                pass

    first, second, third = requests
    assert first.path_suffix == "/orders/42"
    assert first.query == "a=1&b=two%20words"
    assert first.query_params == {"a": "1", "b": "two words"}
    assert first.id == "abc-1"
    assert first.headers["x-custom"] == "value" and first.headers["X-CUSTOM"] == "value"
    assert "ServiceBusAuthorization" not in first.headers
    assert first.remote_endpoint is not None and first.remote_endpoint[0] == "127.0.0.1"
    assert accepted[0].path_suffix == "/orders/42" and accepted[0].query == "a=1&b=two%20words"
    assert accepted[0].id == "abc-1" and accepted[0].headers["X-Custom"] == "value"
    assert second.path_suffix == ""
    assert second.query == "c=3&d"
    assert third.path_suffix == "/q" and third.query == "e=5"
    assert all("sb-hc-" not in r.query for r in requests)


# -- flow control -------------------------------------------------------------------------------
async def test_full_backlog_refuses_senders_with_503(env: Env) -> None:
    async with env.listener(backlog=1, backlog_timeout=0.2) as listener:
        client = env.client()
        async with asyncio.timeout(GUARD):
            first = await client.connect(connection_id="first")  # accepted, waits in the backlog
            with pytest.raises(RelayError) as info:
                await client.connect()
            assert info.value.status == 503 and "backlog is full" in str(info.value)
            taken = await listener.accept()
            assert taken is not None and taken.id == "first"
            second = await client.connect(connection_id="second")  # room again
            assert (await listener.accept()).id == "second"
            for conn in (first, second, taken):
                await conn.close()


async def test_accepts_beyond_max_pending_get_503(env: Env) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: AcceptRequest) -> bool:
        entered.set()
        await release.wait()
        return True

    async with env.listener(accept_handler=slow, max_pending_accepts=1) as listener, serving(listener, echo):
        client = env.client()
        async with asyncio.timeout(GUARD):
            first = asyncio.create_task(client.connect())
            await entered.wait()
            with pytest.raises(RelayError) as info:
                await client.connect()
            assert info.value.status == 503
            release.set()
            async with await first as conn:
                await conn.send("through")
                assert await conn.recv() == "through"


# -- errors -------------------------------------------------------------------------------------
async def test_sender_with_bad_key_is_unauthorized(env: Env) -> None:
    async with env.listener():
        client = HybridConnectionClient(env.address, token_provider=SasKeyTokenProvider(
            env.srv.root_rule.name, "bm90IHRoZSByaWdodCBrZXk="))
        with pytest.raises(Unauthorized) as info:
            async with asyncio.timeout(GUARD):
                await client.connect()
    assert info.value.status == 401 and "TrackingId:" in str(info.value)


async def test_sender_to_unknown_hc_gets_endpoint_not_found(env: Env) -> None:
    with pytest.raises(EndpointNotFound) as info:
        async with asyncio.timeout(GUARD):
            await HybridConnectionClient.from_connection_string(env.cs, entity="nope").connect()
    assert info.value.status == 404


async def test_sender_with_no_listener_gets_endpoint_not_found(env: Env) -> None:
    with pytest.raises(EndpointNotFound) as info:
        async with asyncio.timeout(GUARD):
            await env.client().connect()
    assert info.value.status == 404 and "TrackingId:" in str(info.value)


async def test_listener_open_fails_fast_on_misconfiguration(env: Env) -> None:
    bad_key = HybridConnectionListener(env.address, token_provider=SasKeyTokenProvider(
        env.srv.root_rule.name, "bm90IHRoZSByaWdodCBrZXk="))
    with pytest.raises(Unauthorized):
        async with asyncio.timeout(GUARD):
            await bad_key.open()
    assert not bad_key.is_online
    with pytest.raises(EndpointNotFound):
        async with asyncio.timeout(GUARD):
            async with HybridConnectionListener.from_connection_string(env.cs, entity="nope"):
                pass


async def test_fixed_token_from_connection_string_and_address_form(env: Env) -> None:
    rule = env.srv.root_rule
    token = build_token(env.address, rule.name, rule.primary_key, int(time.time() + 600))
    sas_cs = f"Endpoint=http://127.0.0.1:{env.srv.port}/;EntityPath={env.name};SharedAccessSignature={token}"
    async with HybridConnectionListener(env.address, token_provider=SasTokenProvider(token)) as listener, \
            serving(listener, echo):
        async with asyncio.timeout(GUARD):
            async with await HybridConnectionClient(sas_cs).connect() as conn:
                await conn.send("fixed")
                assert await conn.recv() == "fixed"


# -- reconnect and renewal ----------------------------------------------------------------------
async def test_listener_reconnects_when_relay_drops_its_channel(env: Env) -> None:
    listener = env.listener()
    events = Events(listener)
    async with listener, serving(listener, echo):
        await events.wait("online")
        [channel] = env.channels()
        channel.close(1011, "test")
        offline = await events.wait("offline")
        assert (offline.close_code, offline.close_reason) == (1011, "test")
        await events.wait("online", 2)
        assert listener.is_online
        [new_channel] = env.channels()
        assert new_channel is not channel
        async with asyncio.timeout(GUARD):
            async with await env.client().connect() as conn:
                await conn.send("back")
                assert await conn.recv() == "back"
    assert events.seen[-1].name == "offline" and not listener.is_online


async def test_listener_reconnects_after_relay_restart(env: Env) -> None:
    listener = env.listener()
    events = Events(listener)
    port = env.srv.port
    async with listener, serving(listener, echo):
        await events.wait("online")
        await env.srv.stop()
        await events.wait("offline")
        env.srv = await start_relay(env.data_dir, port=port)
        await events.wait("online", 2)
        async with asyncio.timeout(GUARD):
            async with await env.client().connect() as conn:
                await conn.send("restarted")
                assert await conn.recv() == "restarted"


class RecordingProvider(SasKeyTokenProvider):
    """A real SAS key provider that also remembers the expiry of every token it issued."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.expiries: list[int] = []

    async def get_token(self, audience_uri: str, lifetime: float = 3600.0) -> tuple[str, int]:
        token, expires_at = await super().get_token(audience_uri, lifetime)
        self.expiries.append(expires_at)
        return token, expires_at


async def test_token_renewal_keeps_the_control_channel(strict_env: Env) -> None:
    env = strict_env
    rule = env.srv.root_rule
    provider = RecordingProvider(rule.name, rule.primary_key, lifetime=4)
    listener = env.listener(token_provider=provider, token_renew_margin=2)
    events = Events(listener)
    async with listener, serving(listener, echo):
        [channel] = env.channels()
        first_expiry = provider.expiries[0]
        # Outlive the first token: the relay (grace 0, skew 0) would drop us at its expiry.
        await asyncio.sleep(max(0.0, first_expiry + 1.5 - time.time()))
        assert len(provider.expiries) >= 2 and provider.expiries[-1] > first_expiry
        assert listener.is_online
        assert events.of("offline") == [] and len(events.of("online")) == 1
        assert env.channels() == [channel] and not channel.closed
        async with asyncio.timeout(GUARD):
            async with await env.client().connect() as conn:
                await conn.send("still here")
                assert await conn.recv() == "still here"


async def test_without_renewal_the_relay_drops_the_listener(strict_env: Env) -> None:
    # The control case for the test above: a token that cannot be renewed runs out.
    env = strict_env
    rule = env.srv.root_rule
    token = build_token(env.address, rule.name, rule.primary_key, int(time.time() + 2))
    listener = HybridConnectionListener(env.address, token_provider=SasTokenProvider(token),
                                        reconnect_min=0.05, reconnect_max=0.2)
    events = Events(listener)
    async with listener:
        offline = await events.wait("offline")
        assert offline.close_code == 1008
        assert not listener.is_online


async def test_deleted_hc_stops_a_strict_listener_and_not_a_patient_one(env: Env) -> None:
    strict = env.listener(stop_on_not_found=True)
    patient = env.listener()
    events = Events(patient)
    async with strict, patient, serving(patient, echo):
        env.srv.store.delete_hc("hyrelay", env.name)
        env.srv.relay.refresh()
        with pytest.raises(EndpointNotFound):
            async with asyncio.timeout(GUARD):
                await strict.accept()
        assert not strict.is_online
        # The default listener keeps trying through 404s...
        await events.wait("connecting", 3)
        assert not patient.is_online
        # ...so it is back as soon as the hybrid connection is.
        env.srv.store.create_hc("hyrelay", env.name, requires_client_authorization=True)
        env.srv.relay.refresh()
        await events.wait("online", 2)
        async with asyncio.timeout(GUARD):
            async with await env.client().connect() as conn:
                await conn.send("recreated")
                assert await conn.recv() == "recreated"
