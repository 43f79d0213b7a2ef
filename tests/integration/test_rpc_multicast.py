"""hyrelay.rpc events on multicast hybrid connections: every service listening receives each event.

Real relay, real sockets, no mocks. Timeouts are hang guards only; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import msgspec
import pytest
from click.testing import CliRunner

from hyrelay import rpc
from hyrelay.cli import main

from .test_rpc import Calculator, guard


class Quote(msgspec.Struct):
    symbol: str
    price: float


class Watcher:
    """Receives price events."""

    def __init__(self, expect: int = 1) -> None:
        self.quotes: list[Quote] = []
        self.halts: list[str] = []
        self.expect = expect
        self.got_all = asyncio.Event()

    @rpc.event
    async def price_changed(self, symbol: str, price: float) -> None:
        self.quotes.append(Quote(symbol, price))
        if len(self.quotes) >= self.expect:
            self.got_all.set()

    @rpc.event(name="market.halted")
    def halted(self, quote: Quote) -> None:
        self.halts.append(quote.symbol)


class CalculatorWithEvents(Calculator):
    def __init__(self) -> None:
        super().__init__()
        self.resets = asyncio.Event()

    @rpc.event
    async def reset(self) -> None:
        self.resets.set()


@pytest.fixture
def prices(relay) -> str:
    return relay.create_hc("prices", multicast=True)


@pytest.fixture
def cs(relay, prices) -> str:
    return relay.server.connection_string(entity=prices)


@contextlib.asynccontextmanager
async def watchers(cs: str, count: int, expect: int = 1):
    services = [Watcher(expect) for _ in range(count)]
    handles = [await rpc.serve(w, cs) for w in services]
    try:
        yield services
    finally:
        for handle in handles:
            await handle.close()


async def test_three_services_receive_a_published_event(cs):
    async with watchers(cs, 3) as services:
        assert await guard(rpc.publish(cs, "price_changed", symbol="HYR", price=12.5)) == 3
        for w in services:
            await guard(w.got_all.wait())
            assert w.quotes == [Quote("HYR", 12.5)]


async def test_publish_with_nobody_listening_reaches_zero(cs):
    assert await guard(rpc.publish(cs, "price_changed", "HYR", 1.0)) == 0


async def test_websocket_publisher_for_high_rates(cs):
    n = 200
    async with watchers(cs, 3, expect=n) as services:
        async with rpc.Publisher(cs) as pub:
            assert await guard(pub.publish("price_changed", "A", 0.0)) == 3
            for i in range(1, n):
                await guard(pub.send("price_changed", symbol="A", price=float(i)))
            await guard(pub.drain())
            assert pub.acknowledged == n and pub.deliveries == 3 * n
            # a positional struct argument, to an event with a dotted name
            assert await guard(pub.publish("market.halted", Quote("A", 1.0))) == 3
        for w in services:
            await guard(w.got_all.wait())
            assert [q.price for q in w.quotes] == [float(i) for i in range(n)]


async def test_bad_events_do_not_hurt_the_listener(cs):
    async with watchers(cs, 1) as (w,):
        assert await rpc.publish(cs, "unknown_event", 1) == 1
        assert await rpc.publish(cs, "price_changed", "missing the price") == 1
        assert await rpc.publish(cs, "price_changed", "OK", 2.0) == 1
        await guard(w.got_all.wait())
        assert w.quotes == [Quote("OK", 2.0)]


async def test_a_service_can_take_events_from_a_second_hybrid_connection(relay, prices):
    relay.create_hc("calc")
    calc_cs = relay.server.connection_string(entity="calc")
    service = CalculatorWithEvents()
    async with rpc.serving(service, calc_cs, events=prices):
        async with rpc.connect(calc_cs, CalculatorWithEvents) as svc:
            assert await svc.add(1, 2) == 3
        assert await guard(rpc.publish(relay.server.connection_string(), "reset", entity=prices)) == 1
        await guard(service.resets.wait())


async def test_cli_publish(cs):
    async with watchers(cs, 2) as services:
        result = await guard(asyncio.to_thread(
            CliRunner().invoke, main, ["rpc", "publish", cs, "price_changed", '{"symbol": "CLI", "price": 3}']))
        assert result.exit_code == 0 and json.loads(result.output) == {"listeners": 2}
        for w in services:
            await guard(w.got_all.wait())
            assert w.quotes == [Quote("CLI", 3.0)]
