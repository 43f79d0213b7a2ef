"""hyco-ws 1.0.5, Microsoft's Node WebSocket client, against the relay, unchanged."""

from __future__ import annotations

import pytest

from .nodeproc import NodeProc


def start(relay, script: str, path: str, *args: str, rule=None) -> "NodeProc":
    rule = rule or relay.server.root_rule
    return NodeProc.start(script, relay.ws, path, rule.name, rule.primary_key, *args)


async def online_listener(relay, path: str, *args: str) -> NodeProc:
    listener = await start(relay, "ws-listener.js", path, *args)
    await listener.wait_event("listening")
    return listener


@pytest.mark.parametrize("token_args", [(), ("--tokenInQuery",)], ids=["header", "query"])
async def test_hyco_ws_listener_and_sender_echo(relay, token_args):
    relay.create_hc("wsecho")
    listener = await online_listener(relay, "wsecho", *token_args)
    sender = await start(relay, "ws-sender.js", "wsecho", "--count=5", "--binSize=70000", *token_args)
    assert await sender.wait_exit() == 0, sender.events
    echoes = sender.all("echo")
    assert [e["type"] for e in echoes] == ["text"] * 5 + ["binary"]
    assert all(e["match"] for e in echoes)
    assert echoes[-1]["len"] == 70000
    await listener.wait_event("close", code=1000)
    assert [m["type"] for m in listener.all("message")] == ["text"] * 5 + ["binary"]
    assert await listener.stop() == 0


async def test_hyco_ws_subprotocol_suffix_and_query(relay):
    relay.create_hc("wsproto")
    listener = await online_listener(relay, "wsproto")
    sender = await start(relay, "ws-sender.js", "wsproto", "--protocol=chat.v1", "--suffix=/room7?x=1", "--count=1")
    assert await sender.wait_exit() == 0, sender.events
    assert (await sender.wait_event("open"))["protocol"] == "chat.v1"
    connection = await listener.wait_event("connection")
    assert connection["protocol"] == "chat.v1"
    assert "/$hc/wsproto/room7?x=1&sb-hc-action=accept" in connection["url"]
    await listener.stop()


async def test_hyco_ws_close_codes_pass_through(relay):
    relay.create_hc("wsclose")
    listener = await online_listener(relay, "wsclose")
    sender = await start(relay, "ws-sender.js", "wsclose", "--count=1", "--closeCode=4002", "--closeReason=done")
    assert await sender.wait_exit() == 0, sender.events
    close = await listener.wait_event("close")
    assert (close["code"], close["reason"]) == (4002, "done")
    await listener.stop()
    listener = await online_listener(relay, "wsclose", "--closeWith=4001")
    sender = await start(relay, "ws-sender.js", "wsclose", "--count=1", "--expectClose=4001")
    assert await sender.wait_exit() == 0, sender.events
    assert (await sender.wait_event("close"))["byPeer"] is True
    await listener.stop()


async def test_hyco_ws_hundred_concurrent_connections(relay):
    relay.create_hc("wsmany")
    listener = await online_listener(relay, "wsmany")
    sender = await start(relay, "ws-sender.js", "wsmany", "--concurrency=100", "--count=3", "--binSize=256",
                         "--timeout=60")
    assert await sender.wait_exit(120) == 0, sender.all("error")[:5]
    assert (await sender.wait_event("summary")) ["ok"] == 100
    await listener.stop()


async def test_hyco_ws_refusals(relay):
    relay.create_hc("wsneg")
    send_only = relay.create_rule("sendonly", ("Send",))
    listen_only = relay.create_rule("listenonly", ("Listen",))
    listener = await online_listener(relay, "wsneg")
    cases = [
        ((), {"path": "wsneg", "args": ("--noToken",)}, 401),
        ((), {"path": "wsneg", "args": ("--key=wrong",)}, 401),
        ((), {"path": "nosuch", "args": ()}, 404),
        ((), {"path": "wsneg", "args": (), "rule": listen_only}, 403),
    ]
    for _, case, status in cases:
        sender = await start(relay, "ws-sender.js", case["path"], *case["args"], rule=case.get("rule"))
        assert await sender.wait_exit() == 2
        assert (await sender.wait_event("error"))["status"] == status, case
    # a listener with a Send-only rule is refused with 403 and exits on its first error
    refused = await start(relay, "ws-listener.js", "wsneg", rule=send_only)
    assert await refused.wait_exit() == 2
    assert (await refused.wait_event("error"))["status"] == 403
    # the good listener kept working through all of that
    sender = await start(relay, "ws-sender.js", "wsneg", "--count=1")
    assert await sender.wait_exit() == 0
    await listener.stop()


async def test_hyco_ws_listener_token_renewal(relay):
    relay.create_hc("wsrenew")
    listener = await online_listener(relay, "wsrenew", "--renewAfter=0.2")
    await listener.wait_event("renewSent")
    sender = await start(relay, "ws-sender.js", "wsrenew", "--count=1")
    assert await sender.wait_exit() == 0
    assert len(listener.all("listening")) == 1  # renewal did not cost a reconnect
    await listener.stop()
