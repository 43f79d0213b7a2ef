"""The official hyco-ws client on one side, the hyrelay SDK on the other."""

from __future__ import annotations

import asyncio
import contextlib

from hyrelay.client import ConnectionClosed, HybridConnectionClient, HybridConnectionListener

from .nodeproc import NodeProc


def connection_string(relay, hc: str) -> str:
    return relay.server.connection_string(entity=hc)


async def test_hyco_ws_listener_with_hyrelay_sender(relay):
    relay.create_hc("mixed1")
    rule = relay.server.root_rule
    listener = await NodeProc.start("ws-listener.js", relay.ws, "mixed1", rule.name, rule.primary_key)
    await listener.wait_event("listening")
    client = HybridConnectionClient.from_connection_string(connection_string(relay, "mixed1"))
    async with await client.connect(path_suffix="/room7", query={"x": "1"}) as conn:
        await conn.send("hello from python")
        assert await conn.recv() == "hello from python"
        await conn.send(bytes(range(256)) * 300)
        assert await conn.recv() == bytes(range(256)) * 300
        await conn.send_stream(bytes([i]) * 40000 for i in range(10))  # fragmented; ws 1.1.5 reassembles
        assert await conn.recv() == b"".join(bytes([i]) * 40000 for i in range(10))
        await conn.close(4003, "python-done")
    close = await listener.wait_event("close")
    assert (close["code"], close["reason"]) == (4003, "python-done")
    connection = await listener.wait_event("connection")
    assert "/$hc/mixed1/room7?x=1&sb-hc-action=accept" in connection["url"]
    # the listener closing with its own code reaches the SDK sender
    await listener.stop()
    listener = await NodeProc.start("ws-listener.js", relay.ws, "mixed1", rule.name, rule.primary_key,
                                    "--closeWith=4001")
    await listener.wait_event("listening")
    conn = await client.connect()
    await conn.send("trigger")
    with contextlib.suppress(ConnectionClosed):
        await asyncio.wait_for(conn.recv(), 20)
    await conn.wait_closed()
    assert (conn.close_code, conn.close_reason) == (4001, "bye-from-listener")
    await listener.stop()


async def test_hyrelay_listener_with_hyco_ws_sender(relay):
    relay.create_hc("mixed2")
    rule = relay.server.root_rule
    seen: list[str] = []

    async def serve(listener: HybridConnectionListener) -> None:
        async for connection in listener:
            seen.append(connection.subprotocol or "-")

            async def echo(conn=connection) -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for message in conn:
                        await conn.send(message)

            asyncio.create_task(echo())

    async with HybridConnectionListener.from_connection_string(connection_string(relay, "mixed2")) as listener:
        task = asyncio.create_task(serve(listener))
        for args in ((), ("--tokenInQuery",), ("--protocol=chat.v2",)):
            sender = await NodeProc.start("ws-sender.js", relay.ws, "mixed2", rule.name, rule.primary_key,
                                          "--count=4", "--binSize=100000", *args)
            assert await sender.wait_exit() == 0, sender.events
            assert all(e["match"] for e in sender.all("echo"))
        assert (await sender.wait_event("open"))["protocol"] == "chat.v2"
        many = await NodeProc.start("ws-sender.js", relay.ws, "mixed2", rule.name, rule.primary_key,
                                    "--concurrency=100", "--count=2", "--timeout=60")
        assert await many.wait_exit(120) == 0, many.all("error")[:3]
        task.cancel()
    assert "chat.v2" in seen and len(seen) == 103
