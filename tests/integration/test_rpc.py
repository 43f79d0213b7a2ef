"""hyrelay.rpc over relayed WebSockets: calls, batches, errors, deadlines, cancellation, one-way calls,
callbacks, streams with backpressure, connection loss.

Real relay, real sockets, no mocks. Timeouts are hang guards only; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec
import pytest

from hyrelay import rpc
from hyrelay.client import HybridConnectionClient, HybridConnectionListener

GUARD = 20.0  # seconds; only ever a hang guard


# -- the services under test (module level, so their type hints resolve) ---------------------------


class Point(msgspec.Struct):
    x: float
    y: float


class Progress:
    """What a caller of Calculator.work exposes as callbacks."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.notes: list[str] = []

    @rpc.operation
    async def progress(self, percent: int) -> str:
        self.seen.append(percent)
        return f"ack {percent}"

    @rpc.operation(oneway=True)
    async def note(self, text: str) -> None:
        self.notes.append(text)


class Calculator:
    """Adds, divides, fails, sleeps, streams and calls back."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.gate = asyncio.Event()
        self.logged: list[str] = []
        self.logged_event = asyncio.Event()
        self.produced = 0
        self.stream_closed = asyncio.Event()
        self.window_full = asyncio.Event()
        self.calls = 0

    @rpc.operation
    async def add(self, a: int, b: int) -> int:
        """Adds two integers."""
        self.calls += 1
        return a + b

    @rpc.operation
    async def scale(self, p: Point, factor: float = 2.0) -> Point:
        return Point(p.x * factor, p.y * factor)

    @rpc.operation
    def multiply(self, a: float, b: float) -> float:
        """A sync operation: it runs in a worker thread."""
        return a * b

    @rpc.operation
    async def fail(self, kind: str) -> None:
        if kind == "app":
            raise rpc.RpcError("insufficient funds", code=4001, data={"balance": 3})
        if kind == "params":
            raise rpc.InvalidParams("kind is fine, but not today")
        raise ValueError("boom")

    @rpc.operation
    def bad_result(self) -> int:
        return "not an int"  # type: ignore[return-value]

    @rpc.operation
    async def sleep(self, seconds: float) -> str:
        self.started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "slept"

    @rpc.operation(oneway=True)
    async def log(self, text: str) -> None:
        await self.gate.wait()  # the caller must not be waiting on this
        self.logged.append(text)
        self.logged_event.set()

    @rpc.operation
    async def count(self, n: int, window_hint: int = 0) -> AsyncIterator[int]:
        try:
            for i in range(n):
                self.produced += 1
                if window_hint and self.produced == window_hint:
                    self.window_full.set()
                yield i
        finally:
            self.stream_closed.set()

    @rpc.operation
    async def work(self, steps: int, ctx: rpc.Context) -> str:
        answers = []
        for i in range(1, steps + 1):
            answers.append(await ctx.client.call("progress", i * 100 // steps))
        await ctx.callbacks(Progress).note("finished")
        return ", ".join(answers)

    @rpc.operation
    async def whoami(self, ctx: rpc.Context) -> dict[str, str]:
        return {"transport": ctx.transport, "method": ctx.method, "agent": ctx.headers.get("X-Agent", "")}


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def hc(relay) -> str:
    return relay.create_hc("calc")


@pytest.fixture
def cs(relay, hc) -> str:
    return relay.server.connection_string(entity=hc)


@pytest.fixture
async def calc(cs) -> AsyncIterator[Calculator]:
    """The calculator served behind the relay (test_rpc_http uses it too)."""
    service = Calculator()
    async with rpc.serving(service, cs):
        yield service


async def guard(awaitable):
    return await asyncio.wait_for(awaitable, GUARD)


# -- calls -----------------------------------------------------------------------------------------


async def test_typed_calls(cs, calc):
    async with rpc.connect(cs, Calculator) as svc:
        assert await svc.add(1, 2) == 3
        assert await svc.add(a=5, b=6) == 11
        assert await svc.scale(Point(1, 2)) == Point(2.0, 4.0)
        assert await svc.scale(Point(1, 2), factor=3) == Point(3.0, 6.0)
        assert await svc.multiply(1.5, 4) == 6.0
        with pytest.raises(TypeError):
            await svc.add(1)  # checked locally against the signature


async def test_untyped_calls(cs, calc):
    async with rpc.connect(cs) as client:
        assert await client.call("add", 1, 2) == 3
        assert await client.call("add", a=1, b=2) == 3
        assert await client.call("scale", {"x": 1, "y": 1}) == {"x": 2.0, "y": 2.0}
        assert await client.call_with("add", {"a": 2, "b": 2}) == 4


async def test_many_calls_in_flight_on_one_connection(cs, calc):
    async with rpc.connect(cs, Calculator) as svc:
        results = await guard(asyncio.gather(*(svc.add(i, i) for i in range(500))))
        assert results == [2 * i for i in range(500)]
        assert rpc.client_of(svc).peer is not None
    assert calc.calls == 500


async def test_unknown_method_and_bad_arguments(cs, calc):
    async with rpc.connect(cs) as client:
        with pytest.raises(rpc.MethodNotFound) as info:
            await client.call("subtract", 1, 2)
        assert info.value.code == rpc.METHOD_NOT_FOUND and "subtract" in info.value.message
        with pytest.raises(rpc.InvalidParams) as info:
            await client.call("add", 1, "two")
        assert info.value.code == -32602 and "'b'" in info.value.message
        with pytest.raises(rpc.InvalidParams, match="missing required parameter 'b'"):
            await client.call("add", 1)
        with pytest.raises(rpc.InvalidParams, match="too many parameters"):
            await client.call("add", 1, 2, 3)
        with pytest.raises(rpc.InvalidParams, match="unexpected parameter 'c'"):
            await client.call("add", a=1, b=2, c=3)
        with pytest.raises(rpc.InvalidParams, match="'p'"):
            await client.call("scale", {"x": "left", "y": 1})
        with pytest.raises(rpc.InvalidParams, match="array or an object"):
            await client.call_with("add", 5)
        # the connection is still fine
        assert await client.call("add", 1, 2) == 3


async def test_batch_answers_each_call_on_its_own(cs, calc):
    async with rpc.connect(cs) as client:
        results = await guard(client.batch([
            ("add", [1, 2]),
            ("nope", []),
            ("add", {"a": "x", "b": 1}),
            ("log", ["batched"], True),
            ("fail", ["app"]),
            ("multiply", [2, 3]),
        ]))
    assert results[0] == 3
    assert isinstance(results[1], rpc.MethodNotFound)
    assert isinstance(results[2], rpc.InvalidParams) and "'a'" in results[2].message
    assert results[3] is None
    assert isinstance(results[4], rpc.RemoteError) and results[4].code == 4001
    assert results[5] == 6.0


async def test_service_errors_reach_the_caller_and_the_service_keeps_serving(cs, calc):
    async with rpc.connect(cs) as client:
        with pytest.raises(rpc.RemoteError) as info:
            await client.call("fail", "app")
        assert (info.value.code, info.value.message, info.value.data) == (4001, "insufficient funds", {"balance": 3})
        with pytest.raises(rpc.InvalidParams, match="not today"):
            await client.call("fail", "params")
        with pytest.raises(rpc.InternalError) as info:
            await client.call("fail", "crash")
        assert info.value.code == rpc.INTERNAL_ERROR and "ValueError: boom" in info.value.message
        with pytest.raises(rpc.InternalError, match="invalid result"):
            await client.call("bad_result")
        assert await client.call("add", 2, 2) == 4


async def test_discover_returns_openrpc(cs, calc):
    async with rpc.connect(cs) as client:
        doc = await client.discover()
    assert doc["openrpc"].startswith("1.")
    assert doc["info"]["title"] == "Calculator"
    methods = {m["name"]: m for m in doc["methods"]}
    assert methods["add"]["params"][0] == {"name": "a", "required": True, "schema": {"type": "integer"}}
    assert methods["add"]["result"]["schema"] == {"type": "integer"}
    assert methods["log"]["x-oneway"] is True and "result" not in methods["log"]
    assert methods["count"]["x-streaming"] is True
    assert [p["name"] for p in methods["work"]["params"]] == ["steps"]  # the context is not a parameter
    assert methods["scale"]["params"][0]["schema"] == {"$ref": "#/components/schemas/Point"}
    assert "Point" in doc["components"]["schemas"]


async def test_headers_reach_the_context(cs, calc):
    async with rpc.connect(cs, headers={"X-Agent": "pytest"}) as client:
        assert await client.call("whoami") == {"transport": "websocket", "method": "whoami", "agent": "pytest"}


# -- the wire, raw ---------------------------------------------------------------------------------


async def test_malformed_and_invalid_messages_get_standard_errors(cs, calc):
    sender = HybridConnectionClient(cs)
    async with await sender.connect() as conn:
        async def exchange(text: str):
            await conn.send(text)
            return json.loads(await guard(conn.recv()))

        answer = await exchange("{this is not json")
        assert answer["error"]["code"] == -32700 and answer["id"] is None
        answer = await exchange('{"jsonrpc":"1.0","method":"add","params":[1,2],"id":1}')
        assert answer["error"]["code"] == -32600 and answer["id"] == 1
        answer = await exchange('{"jsonrpc":"2.0","method":5,"id":"x"}')
        assert answer["error"]["code"] == -32600 and answer["id"] == "x"
        answer = await exchange("[]")
        assert answer["error"]["code"] == -32600
        answer = await exchange("42")
        assert answer["error"]["code"] == -32600
        answer = await exchange('[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}, 5, '
                                '{"jsonrpc":"2.0","method":"nope","id":2}, '
                                '{"jsonrpc":"2.0","method":"log","params":["n"]}, '
                                '{"jsonrpc":"2.0","method":"add","params":[1],"id":3}]')
        assert isinstance(answer, list) and len(answer) == 4  # the notification has no answer
        by_id = {a["id"]: a for a in answer}
        assert by_id[1]["result"] == 3
        assert by_id[2]["error"]["code"] == -32601
        assert by_id[3]["error"]["code"] == -32602
        assert by_id[None]["error"]["code"] == -32600
        answer = await exchange('{"jsonrpc":"2.0","method":"add","params":[40,2],"id":"after"}')
        assert answer == {"jsonrpc": "2.0", "result": 42, "id": "after"}


async def test_client_ignores_a_reply_for_an_unknown_id(relay, cs):
    async with HybridConnectionListener(cs) as listener:
        async def fake_service() -> None:
            conn = await listener.accept()
            assert conn is not None
            for answer in (42, 7):
                request = json.loads(await conn.recv())
                await conn.send(json.dumps({"jsonrpc": "2.0", "result": "stray", "id": 987654}))
                await conn.send(json.dumps({"jsonrpc": "2.0", "result": answer, "id": request["id"]}))
            await conn.wait_closed()

        task = asyncio.create_task(fake_service())
        async with rpc.connect(cs) as client:
            assert await guard(client.call("anything")) == 42
            assert await guard(client.call("again")) == 7
        await guard(task)


# -- deadlines, cancellation, connection loss ------------------------------------------------------


async def test_deadline_exceeded_cancels_the_service_side(cs, calc):
    async with rpc.connect(cs) as client:
        with pytest.raises(rpc.DeadlineExceeded) as info:
            await guard(client.call("sleep", 60, timeout=0.2))
        assert info.value.code == rpc.DEADLINE_EXCEEDED and isinstance(info.value, TimeoutError)
        await guard(calc.cancelled.wait())
        assert await client.call("add", 1, 1) == 2


async def test_default_deadline_on_connect(cs, calc):
    async with rpc.connect(cs, Calculator, deadline=0.2) as svc:
        with pytest.raises(rpc.DeadlineExceeded):
            await guard(svc.sleep(60))
        assert await svc.add(1, 1) == 2  # fast calls are unaffected
        assert await svc.with_options(timeout=None).sleep(0) == "slept"


async def test_cancelling_the_caller_cancels_the_service_task(cs, calc):
    async with rpc.connect(cs, Calculator) as svc:
        task = asyncio.create_task(svc.sleep(60))
        await guard(calc.started.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await guard(calc.cancelled.wait())  # the service's task saw CancelledError
        assert await svc.add(2, 3) == 5


async def test_pending_calls_fail_promptly_when_the_service_goes_away(cs):
    service = Calculator()
    handle = await rpc.serve(service, cs)
    async with rpc.connect(cs, Calculator) as svc:
        assert await svc.add(1, 1) == 2
        pending = [asyncio.create_task(svc.sleep(60)) for _ in range(3)]
        await guard(service.started.wait())
        await handle.close()
        for task in pending:
            with pytest.raises(rpc.ConnectionLost) as info:
                await guard(task)
            assert "closed" in info.value.message and info.value.code == rpc.CONNECTION_LOST
        # nobody is listening any more
        with pytest.raises(rpc.RelayUnavailable):
            await svc.add(1, 1)
        # a new service instance comes online: the same client reconnects on its next call
        async with rpc.serving(Calculator(), cs):
            assert await guard(svc.add(2, 2)) == 4


async def test_connect_without_a_listener_is_relay_unavailable(relay, cs):
    with pytest.raises(rpc.RelayUnavailable) as info:
        async with rpc.connect(cs):
            pass
    assert info.value.code == rpc.RELAY_UNAVAILABLE and info.value.data["status"] == 404


async def test_service_comes_back_after_its_control_channel_drops(relay, cs, hc):
    async with rpc.serving(Calculator(), cs, listener_options={"reconnect_min": 0.05, "reconnect_max": 0.2}) as h:
        listener = h.listeners[0]
        online = asyncio.Event()
        listener.on("online", lambda _e: online.set())
        async with rpc.connect(cs, Calculator) as svc:
            assert await svc.add(1, 2) == 3
            for channel in relay.relay.router.listeners(f"hyrelay/{hc}"):
                channel.close(1011, "killed by the test")
            await guard(online.wait())
            # the established connection survives a control channel drop (spec), and new ones work
            assert await svc.add(2, 3) == 5
        async with rpc.connect(cs, Calculator) as svc:
            assert await svc.add(3, 4) == 7


async def test_several_listeners_share_the_connections(relay, cs, hc):
    async with rpc.serving(Calculator(), cs, listeners=3) as handle:
        assert len(relay.relay.router.listeners(f"hyrelay/{hc}")) == 3
        clients = [rpc.connect(cs, Calculator) for _ in range(12)]
        proxies = [await c for c in clients]
        try:
            assert await guard(asyncio.gather(*(p.add(i, 1) for i, p in enumerate(proxies)))) == \
                [i + 1 for i in range(12)]
            assert handle.connections == 12
        finally:
            for c in clients:
                await c.client.close()


# -- one-way calls, callbacks, streams -------------------------------------------------------------


async def test_one_way_calls_do_not_wait(cs, calc):
    async with rpc.connect(cs, Calculator) as svc:
        assert await guard(svc.log("hello")) is None  # returns while the service still waits on its gate
        assert calc.logged == []
        calc.gate.set()
        await guard(calc.logged_event.wait())
        assert calc.logged == ["hello"]
        await svc.notify("log", "untyped")
        assert await svc.add(0, 0) == 0
    async with rpc.connect(cs) as client:
        await client.notify("nope", 1)  # an unknown notification is dropped, not answered
        assert await client.call("add", 1, 1) == 2


async def test_service_calls_back_the_client(cs, calc):
    progress = Progress()
    async with rpc.connect(cs, Calculator, callbacks=progress) as svc:
        assert await guard(svc.work(4)) == "ack 25, ack 50, ack 75, ack 100"
    assert progress.seen == [25, 50, 75, 100]
    assert progress.notes == ["finished"]


async def test_callbacks_without_a_callbacks_object_fail_cleanly(cs, calc):
    async with rpc.connect(cs, Calculator) as svc:
        with pytest.raises(rpc.InternalError, match="MethodNotFound"):
            await guard(svc.work(1))


async def test_streaming_with_backpressure(cs, calc):
    window = 4
    async with rpc.connect(cs, Calculator, window=window) as svc:
        items = svc.count(20, window_hint=window)
        first = await guard(anext(items))
        assert first == 0
        await guard(calc.window_full.wait())
        # a round trip on the same connection lets the service run; the generator must still be parked
        assert await svc.add(1, 1) == 2
        assert calc.produced == window
        received = [first]
        async for item in items:
            received.append(item)
            assert calc.produced <= len(received) + window
        assert received == list(range(20))
    async with rpc.connect(cs) as client:
        assert [i async for i in client.stream("count", 5, window=1)] == [0, 1, 2, 3, 4]
        assert await client.call("count", 3) == [0, 1, 2]  # a plain call collects the items


async def test_leaving_a_stream_early_stops_the_generator(cs, calc):
    async with rpc.connect(cs, Calculator, window=2) as svc:
        async for item in svc.count(1000):
            if item == 3:
                break
        await guard(calc.stream_closed.wait())
        assert calc.produced < 1000
        assert await svc.add(1, 2) == 3


async def test_stream_errors_and_non_streams(cs, calc):
    async with rpc.connect(cs) as client:
        with pytest.raises(rpc.InvalidRequest, match="does not stream"):
            async for _ in client.stream("add", 1, 2):
                pass
        with pytest.raises(rpc.InvalidParams):
            async for _ in client.stream("count", "many"):
                pass
        with pytest.raises(rpc.MethodNotFound):
            async for _ in client.stream("nope"):
                pass


async def test_direct_websocket_without_relay():
    async with rpc.WebSocketServer(Calculator()) as server:
        async with rpc.connect_websocket(server.url, Calculator, callbacks=Progress()) as svc:
            assert await svc.add(20, 22) == 42
            assert [i async for i in svc.count(3)] == [0, 1, 2]
            assert await svc.work(2) == "ack 50, ack 100"


async def test_plain_json_rpc_without_the_coalescing_subprotocol(cs, calc):
    progress = Progress()
    async with rpc.connect(cs, Calculator, callbacks=progress, coalesce=False, window=3) as svc:
        peer = rpc.client_of(svc).peer
        assert peer is not None and not peer.coalesce
        assert await guard(asyncio.gather(*(svc.add(i, 1) for i in range(100)))) == [i + 1 for i in range(100)]
        results = await svc.batch([("add", [1, 2]), ("nope", [])])
        assert results[0] == 3 and isinstance(results[1], rpc.MethodNotFound)
        assert [i async for i in svc.count(10)] == list(range(10))
        assert await guard(svc.work(2)) == "ack 50, ack 100"
        task = asyncio.create_task(svc.sleep(60))
        await guard(calc.started.wait())
        task.cancel()
        await guard(calc.cancelled.wait())
    async with rpc.connect(cs, Calculator) as svc:
        peer = rpc.client_of(svc).peer
        assert peer is not None and peer.coalesce  # both ends offer hyrelay.rpc.v1 by default
