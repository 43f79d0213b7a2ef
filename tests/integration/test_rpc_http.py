"""hyrelay.rpc over relayed HTTP POST, the sync client and the ``hyrelay rpc`` CLI.

Real relay, real sockets, no mocks. Timeouts are hang guards only; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from click.testing import CliRunner

from hyrelay import rpc
from hyrelay.cli import main

# The calculator service and its fixtures (hc, cs, calc) are test_rpc's: pytest finds imported fixtures.
from .test_rpc import GUARD, Calculator, Point, calc, cs, guard, hc  # noqa: F401,F811


@pytest.fixture
async def http(relay, hc) -> AsyncIterator:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GUARD),
                                     headers=relay.auth(hc)) as session:
        yield session


# -- HTTP ------------------------------------------------------------------------------------------


async def test_http_post_request(relay, hc, calc, http):
    body = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}
    async with http.post(f"{relay.http}/{hc}", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
        assert await r.json() == {"jsonrpc": "2.0", "result": 3, "id": 1}
    body = {"jsonrpc": "2.0", "method": "scale", "params": {"p": {"x": 1, "y": 2}, "factor": 10}, "id": "s"}
    async with http.post(f"{relay.http}/{hc}", json=body) as r:
        assert await r.json() == {"jsonrpc": "2.0", "result": {"x": 10.0, "y": 20.0}, "id": "s"}
    async with http.post(f"{relay.http}/{hc}", json={"jsonrpc": "2.0", "method": "whoami", "id": 2}) as r:
        assert (await r.json())["result"]["transport"] == "http"


async def test_http_errors_and_batches(relay, hc, calc, http):
    async with http.post(f"{relay.http}/{hc}", data=b"{nope") as r:
        answer = await r.json()
        assert r.status == 200 and answer["error"]["code"] == -32700 and answer["id"] is None
    async with http.post(f"{relay.http}/{hc}", json={"jsonrpc": "2.0", "method": "add", "params": [1], "id": 9}) as r:
        answer = await r.json()
        assert answer["id"] == 9 and answer["error"]["code"] == -32602 and "'b'" in answer["error"]["message"]
    batch = [
        {"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": 1},
        {"jsonrpc": "2.0", "method": "missing", "id": 2},
        {"jsonrpc": "2.0", "method": "fail", "params": ["crash"], "id": 3},
        {"jsonrpc": "2.0", "method": "log", "params": ["from a batch"]},
    ]
    async with http.post(f"{relay.http}/{hc}", json=batch) as r:
        answers = {a["id"]: a for a in await r.json()}
    assert set(answers) == {1, 2, 3}
    assert answers[1]["result"] == 5
    assert answers[2]["error"]["code"] == -32601
    assert answers[3]["error"]["code"] == -32603 and "boom" in answers[3]["error"]["message"]
    # callbacks need a WebSocket
    async with http.post(f"{relay.http}/{hc}", json={"jsonrpc": "2.0", "method": "work", "params": [1], "id": 4}) as r:
        assert (await r.json())["error"]["code"] == rpc.NO_CALLBACK_CHANNEL
    # a streaming operation over HTTP answers with all its items
    async with http.post(f"{relay.http}/{hc}", json={"jsonrpc": "2.0", "method": "count", "params": [4], "id": 5}) as r:
        assert (await r.json())["result"] == [0, 1, 2, 3]


async def test_http_notification_is_accepted_with_202(relay, hc, calc, http):
    body = {"jsonrpc": "2.0", "method": "log", "params": ["via http"]}
    async with http.post(f"{relay.http}/{hc}", json=body) as r:
        assert r.status == 202  # answered while the operation still waits on its gate
        assert await r.read() == b""
    assert calc.logged == []
    calc.gate.set()
    await guard(calc.logged_event.wait())
    assert calc.logged == ["via http"]
    batch = [{"jsonrpc": "2.0", "method": "log", "params": ["a"]}, {"jsonrpc": "2.0", "method": "log", "params": ["b"]}]
    async with http.post(f"{relay.http}/{hc}", json=batch) as r:
        assert r.status == 202


async def test_http_get_describes_and_other_methods_are_refused(relay, hc, calc, http):
    async with http.get(f"{relay.http}/{hc}") as r:
        doc = await r.json()
        assert doc["info"]["title"] == "Calculator" and any(m["name"] == "add" for m in doc["methods"])
    async with http.put(f"{relay.http}/{hc}", data=b"{}") as r:
        assert r.status == 405


# -- sync client -----------------------------------------------------------------------------------


async def test_sync_client(cs, calc):
    def script() -> tuple:
        with rpc.SyncClient(cs) as client:
            untyped = client.call("add", 20, 22)
            streamed = list(client.stream("count", 3))
            try:
                client.call("nope")
            except rpc.MethodNotFound as err:
                missing = err.code
        with rpc.SyncClient(cs, Calculator, deadline=GUARD) as svc:
            typed = svc.add(1, 2)
            point = svc.scale(Point(1, 1), factor=4)
            items = list(svc.count(2))
            try:
                svc.call("sleep", 60, timeout=0.1)
            except rpc.DeadlineExceeded:
                deadline = True
        return untyped, streamed, missing, typed, point, items, deadline

    assert await guard(asyncio.to_thread(script)) == (42, [0, 1, 2], -32601, 3, Point(4.0, 4.0), [0, 1], True)


# -- CLI -------------------------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(main, ["rpc", *args], catch_exceptions=False)


async def test_cli_call_and_describe(cs, calc):
    result = await guard(asyncio.to_thread(_cli, "call", cs, "add", "[1, 2]"))
    assert result.exit_code == 0 and json.loads(result.output) == 3
    result = await guard(asyncio.to_thread(_cli, "call", cs, "scale", '{"p": {"x": 1, "y": 2}}'))
    assert result.exit_code == 0 and json.loads(result.output) == {"x": 2.0, "y": 4.0}
    result = await guard(asyncio.to_thread(_cli, "describe", cs))
    assert result.exit_code == 0
    assert {m["name"] for m in json.loads(result.output)["methods"]} >= {"add", "scale", "count", "work"}


async def test_cli_errors_exit_nonzero(relay, cs, calc):
    result = await guard(asyncio.to_thread(_cli, "call", cs, "subtract", "[1, 2]"))
    assert result.exit_code == 1 and "-32601" in result.output and "subtract" in result.output
    result = await guard(asyncio.to_thread(_cli, "call", cs, "add", '["x", 2]'))
    assert result.exit_code == 1 and "-32602" in result.output and "'a'" in result.output
    result = await guard(asyncio.to_thread(_cli, "call", cs, "add", "not json"))
    assert result.exit_code == 2 and "PARAMS" in result.output
    result = await guard(asyncio.to_thread(_cli, "call", cs, "sleep", "[60]", "--timeout", "0.2"))
    assert result.exit_code == 1 and str(rpc.DEADLINE_EXCEEDED) in result.output
    relay.create_hc("empty")
    result = await guard(asyncio.to_thread(_cli, "describe", relay.server.connection_string(entity="empty")))
    assert result.exit_code == 1 and str(rpc.RELAY_UNAVAILABLE) in result.output
