"""``/$metrics`` and ``/$admin/events`` against a real relay, real listeners and senders."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hyrelay.protocol.sas import build_token
from hyrelay.server import events
from hyrelay.server.app import RelayServer

from ..conftest import make_config
from .wsutil import EchoListener, refused, ws_connect

NS = "hyrelay"
Samples = dict[tuple[str, frozenset], float]


# -- helpers --------------------------------------------------------------------------------------

async def wait_for(check: Callable, timeout: float = 10.0, step: float = 0.05):
    """Poll the async *check* until it returns something truthy; a hang guard, not a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(step)


async def scrape(session: aiohttp.ClientSession, relay) -> Samples:
    async with session.get(f"{relay.http}/$metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: Samples, name: str, hc: str, **labels: str) -> float | None:
    wanted = frozenset({"namespace": NS, "hybrid_connection": hc, **labels}.items())
    return samples.get((f"hyrelay_{name}", wanted))


def admin_token(relay, rule=None, key: str | None = None, ttl: float = 3600, path: str = "$admin") -> str:
    rule = rule or relay.server.root_rule
    return build_token(f"{relay.http}/{path}", rule.name, key or rule.primary_key, int(time.time() + ttl))


async def listen(relay, name: str, headers=None):
    return await ws_connect(f"{relay.ws}/$hc/{name}?sb-hc-action=listen",
                            relay.auth(name) if headers is None else headers)


async def connect(relay, name: str, headers=None):
    return await ws_connect(f"{relay.ws}/$hc/{name}?sb-hc-action=connect",
                            relay.auth(name) if headers is None else headers)


class Sse:
    """A minimal Server-Sent Events reader over an aiohttp response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []
        self.seen: list[tuple[str, dict]] = []

    async def next(self, timeout: float = 10.0) -> tuple[str, dict]:
        event, data = "message", []
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not raw:
                raise EOFError("the event stream ended")
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    parsed = (event, json.loads("\n".join(data)))
                    self.seen.append(parsed)
                    return parsed
                event = "message"
            elif line.startswith(":"):
                self.comments.append(line)
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)

    async def until(self, event: str, where: Callable[[dict], bool] = lambda d: True,
                    timeout: float = 10.0) -> dict:
        """Skip ahead to the next *event* whose data satisfies *where*."""
        deadline = time.monotonic() + timeout
        while True:
            name, data = await self.next(max(0.01, deadline - time.monotonic()))
            if name == event and where(data):
                return data


async def open_events(session: aiohttp.ClientSession, relay, query: str = "", headers=None) -> Sse:
    resp = await session.get(f"{relay.http}/$admin/events{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return Sse(resp)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as s:
        yield s


# -- /$metrics ------------------------------------------------------------------------------------

async def test_metrics_are_open_and_never_show_keys(relay, session):
    relay.create_hc("quiet")
    relay.create_rule("entity-rule", ("Listen",), entity="quiet")
    async with session.get(f"{relay.http}/$metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    for rule in relay.store.list_rules(NS) + relay.store.list_rules(NS, "quiet"):
        assert rule.primary_key not in text and rule.secondary_key not in text
    samples = await scrape(session, relay)
    # Every series exists from the moment the HC does, at zero.
    for result in ("success", "client_error", "server_error"):
        assert metric(samples, "listener_connections_total", "quiet", result=result) == 0
        assert metric(samples, "sender_connections_total", "quiet", result=result) == 0
    for name in ("listener_disconnects_total", "sender_disconnects_total", "active_connections",
                 "active_listeners", "bytes_transferred_total"):
        assert metric(samples, name, "quiet") == 0, name
    assert samples[("hyrelay_hybrid_connections", frozenset({"namespace": NS}.items()))] == 1


async def test_metrics_follow_real_connections(relay, session):
    relay.create_hc("m1")
    listener = EchoListener(await listen(relay, "m1"))
    samples = await wait_for(lambda: _when(session, relay, lambda s: metric(s, "active_listeners", "m1") == 1))
    assert metric(samples, "listener_connections_total", "m1", result="success") == 1

    sender = await connect(relay, "m1")
    await sender.send(b"x" * 1000)
    assert await sender.recv() == b"x" * 1000
    # Bytes of a connection that is still open already count.
    samples = await scrape(session, relay)
    assert metric(samples, "active_connections", "m1") == 1
    assert metric(samples, "sender_connections_total", "m1", result="success") == 1
    assert metric(samples, "bytes_transferred_total", "m1") == 2000

    await sender.send("hello")
    assert await sender.recv() == "hello"
    await sender.close()
    samples = await wait_for(lambda: _when(session, relay, lambda s: metric(s, "active_connections", "m1") == 0))
    assert metric(samples, "sender_disconnects_total", "m1") == 1
    assert metric(samples, "bytes_transferred_total", "m1") == 2010

    await listener.close()
    samples = await wait_for(lambda: _when(session, relay, lambda s: metric(s, "active_listeners", "m1") == 0))
    assert metric(samples, "listener_disconnects_total", "m1") == 1


async def test_metrics_count_failures_as_client_errors(relay, session):
    relay.create_hc("fails")
    # A sender with no listener online: 404.
    status, _ = await refused(f"{relay.ws}/$hc/fails?sb-hc-action=connect", relay.auth("fails"))
    assert status == 404
    # A listener and a sender with a token signed by the wrong key: 401.
    bad = relay.auth("fails", key="d3JvbmcK")
    assert (await refused(f"{relay.ws}/$hc/fails?sb-hc-action=listen", bad))[0] == 401
    assert (await refused(f"{relay.ws}/$hc/fails?sb-hc-action=connect", bad))[0] == 401
    # Unknown names are attacker-chosen: they never become series.
    assert (await refused(f"{relay.ws}/$hc/nosuch?sb-hc-action=connect", relay.auth("nosuch")))[0] == 404
    samples = await scrape(session, relay)
    assert metric(samples, "sender_connections_total", "fails", result="client_error") == 2
    assert metric(samples, "listener_connections_total", "fails", result="client_error") == 1
    assert metric(samples, "listener_connections_total", "fails", result="success") == 0
    assert metric(samples, "sender_connections_total", "fails", result="success") == 0
    assert not any(dict(labels).get("hybrid_connection") == "nosuch" for _, labels in samples)


async def test_metrics_http_requests_and_latency(relay, session):
    relay.create_hc("web")
    async with session.get(f"{relay.http}/web/hello", headers=relay.auth("web")) as resp:
        assert resp.status == 502  # no listener online
    async with session.request("PROPFIND", f"{relay.http}/web/dav", headers=relay.auth("web")) as resp:
        assert resp.status == 502
    samples = await scrape(session, relay)
    assert metric(samples, "http_requests_total", "web", code="502") == 2
    assert metric(samples, "http_request_duration_seconds_count", "web", method="GET") == 1
    # Client-chosen methods do not become label values.
    assert metric(samples, "http_request_duration_seconds_count", "web", method="OTHER") == 1
    assert metric(samples, "http_request_duration_seconds_bucket", "web", method="GET", le="+Inf") == 1

    relay.store.delete_hc(NS, "web")
    relay.relay.refresh()
    samples = await scrape(session, relay)
    assert not any(dict(labels).get("hybrid_connection") == "web" for _, labels in samples)


async def test_each_relay_has_its_own_registry(relay, session, tmp_path):
    relay.create_hc("only-in-first")
    async with RelayServer(make_config(tmp_path / "second")) as second:
        second.store.create_hc(NS, "only-in-second")
        second.relay.refresh()
        async with session.get(f"http://127.0.0.1:{second.port}/$metrics") as resp:
            text = await resp.text()
        assert "only-in-second" in text and "only-in-first" not in text
    first = await scrape(session, relay)
    assert metric(first, "active_listeners", "only-in-first") == 0
    assert metric(first, "active_listeners", "only-in-second") is None


# -- /$admin/events -------------------------------------------------------------------------------

async def test_events_need_a_manage_token(relay, session):
    url = f"{relay.http}/$admin/events"
    async with session.get(url) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] and body["error"]["trackingId"]
    async with session.get(url, headers={"Authorization": admin_token(relay, key="d3JvbmcK")}) as resp:
        assert resp.status == 401
    send_rule = relay.create_rule("send-only", ("Send", "Listen"))
    async with session.get(url, headers={"Authorization": admin_token(relay, rule=send_rule)}) as resp:
        assert resp.status == 403
    # A Manage token for a different audience does not cover the admin API.
    async with session.get(url, headers={"Authorization": admin_token(relay, path="somehc")}) as resp:
        assert resp.status == 403
    # An entity-level Manage rule is not a namespace rule.
    relay.create_hc("owned")
    entity_rule = relay.create_rule("hc-manage", ("Manage", "Listen", "Send"), entity="owned")
    async with session.get(f"{url}?token={quote(admin_token(relay, rule=entity_rule), safe='')}") as resp:
        assert resp.status == 401


async def test_events_report_listeners_and_connections_filtered_by_hc(relay, session):
    relay.create_hc("watched")
    relay.create_hc("ignored")
    relay.create_hc("Mixed/Case")
    query = f"?hc=watched&hc=mixed/case&token={quote(admin_token(relay), safe='')}"
    stream = await open_events(session, relay, query)
    name, snap = await stream.next()
    assert name == "snapshot"
    assert sorted(hc["name"] for hc in snap["hcs"]) == ["Mixed/Case", "watched"]

    other = EchoListener(await listen(relay, "ignored"))
    listener = EchoListener(await listen(relay, "watched"))
    online = await stream.until("listener_online")
    assert online["hc"] == "watched" and online["data"]["listener"]

    sender = await connect(relay, "watched")
    opened = await stream.until("connection_opened")
    assert opened["hc"] == "watched" and opened["data"]["listener"] == online["data"]["listener"]
    await sender.send(b"y" * 300)
    assert await sender.recv() == b"y" * 300
    # Bytes of the open connection count in the stats; rows come when their numbers change.
    stats = await stream.until("stats", lambda d: any(h["name"] == "watched" and h["bytes"] == 600
                                                      for h in d["hcs"]))
    watched = next(h for h in stats["hcs"] if h["name"] == "watched")
    assert watched["listeners"] == 1 and watched["connections"] == 1
    assert stats["totals"] == {"listeners": 1, "connections": 1, "bytes": 600}
    await sender.close()
    closed = await stream.until("connection_closed")
    assert closed["hc"] == "watched" and closed["data"]["bytes"] == 600
    await listener.close()
    offline = await stream.until("listener_offline")
    assert offline["data"]["listener"] == online["data"]["listener"]

    mixed = EchoListener(await listen(relay, "Mixed/Case"))
    assert (await stream.until("listener_online"))["hc"] == "Mixed/Case"
    await mixed.close()
    await other.close()
    assert all(data.get("hc") != "ignored" for _, data in stream.seen)
    assert all(h["name"] != "ignored" for name, d in stream.seen if name == "stats" for h in d["hcs"])
    stream.resp.close()


async def test_snapshot_lists_listeners_already_online(relay, session):
    relay.create_hc("early")
    listener = EchoListener(await listen(relay, "early"))
    await wait_for(_listeners_online(relay, "early", 1))
    stream = await open_events(session, relay, headers={"ServiceBusAuthorization": admin_token(relay)})
    name, snap = await stream.next()
    assert name == "snapshot" and snap["namespace"] == NS
    early = next(hc for hc in snap["hcs"] if hc["name"] == "early")
    assert len(early["listeners"]) == 1 and early["listeners"][0]["remote"].startswith("127.0.0.1:")
    assert relay.server.root_rule.primary_key not in json.dumps(snap)
    created = asyncio.create_task(stream.until("hc_created", lambda d: d["hc"] == "later"))
    await asyncio.sleep(0)
    relay.create_hc("later")
    await created
    await listener.close()
    stream.resp.close()


async def test_stats_send_every_hc_once_then_only_changes(relay, session, monkeypatch):
    monkeypatch.setattr(events, "STATS_INTERVAL", 0.1)
    relay.create_hc("idle-one")
    relay.create_hc("idle-two")
    stream = await open_events(session, relay, headers={"Authorization": admin_token(relay)})
    first = await stream.until("stats")
    assert sorted(h["name"] for h in first["hcs"]) == ["idle-one", "idle-two"]
    assert first["hcs"][0] == {"name": "idle-one", "listeners": 0, "connections": 0, "bytes": 0,
                               "senderConnections": {"success": 0, "clientError": 0, "serverError": 0},
                               "listenerConnections": {"success": 0, "clientError": 0, "serverError": 0},
                               "httpRequests": 0}
    assert (await stream.until("stats"))["hcs"] == []
    listener = EchoListener(await listen(relay, "idle-two"))
    changed = await stream.until("stats", lambda d: d["hcs"] != [])
    assert [h["name"] for h in changed["hcs"]] == ["idle-two"] and changed["totals"]["listeners"] == 1
    await listener.close()
    stream.resp.close()


async def test_subscriber_is_removed_after_the_client_disconnects(relay, session):
    before = len(relay.relay.observer._subscribers)
    stream = await open_events(session, relay, f"?token={quote(admin_token(relay), safe='')}")
    await stream.until("snapshot")
    assert len(relay.relay.observer._subscribers) == before + 1
    stream.resp.close()  # drop the TCP connection, as a closed browser tab does
    await wait_for(lambda: _true(len(relay.relay.observer._subscribers) == before))


async def test_slow_client_gets_a_dropped_note_not_a_growing_queue(relay, session, monkeypatch):
    monkeypatch.setattr(events, "QUEUE_LIMIT", 5)
    relay.create_hc("burst")
    stream = await open_events(session, relay, f"?hc=burst&token={quote(admin_token(relay), safe='')}")
    await stream.until("snapshot")
    # Twenty events in one go, before the stream's writer can run: only the last five fit.
    for n in range(20):
        relay.relay.observer.emit("burst_test", "burst", n=n)
    dropped = await stream.until("dropped")
    assert dropped == {"count": 15}
    kept = [(await stream.until("burst_test"))["data"]["n"] for _ in range(5)]
    assert kept == [15, 16, 17, 18, 19]
    stream.resp.close()


async def test_heartbeat_comments_keep_the_stream_alive(relay, session, monkeypatch):
    monkeypatch.setattr(events, "HEARTBEAT_INTERVAL", 0.2)
    stream = await open_events(session, relay, headers={"Authorization": admin_token(relay)})
    await stream.until("snapshot")
    await wait_for(lambda: _after_read(stream, lambda: ": ping" in stream.comments))
    stream.resp.close()


async def test_stream_ends_when_the_signing_key_is_regenerated(relay, session):
    stream = await open_events(session, relay, headers={"Authorization": admin_token(relay)})
    await stream.until("snapshot")
    relay.store.regenerate_key(NS, None, relay.server.root_rule.name, "primary")
    relay.relay.refresh()
    await stream.until("expired")
    with pytest.raises(EOFError):
        while True:
            await stream.next()


async def test_open_streams_do_not_delay_shutdown(session, tmp_path):
    server = RelayServer(make_config(tmp_path / "data"))
    await server.start()
    token = build_token(f"{server.base_url}/$admin", server.root_rule.name, server.root_rule.primary_key,
                        int(time.time() + 600))
    resp = await session.get(f"http://127.0.0.1:{server.port}/$admin/events", headers={"Authorization": token})
    stream = Sse(resp)
    await stream.until("snapshot")
    started = time.monotonic()
    await asyncio.wait_for(server.stop(), 10)
    assert time.monotonic() - started < 5
    with pytest.raises((EOFError, aiohttp.ClientError)):
        while True:
            await stream.next(5)


# -- small async predicates for wait_for ----------------------------------------------------------

async def _when(session, relay, condition) -> Samples | None:
    samples = await scrape(session, relay)
    return samples if condition(samples) else None


async def _true(value: bool) -> bool:
    return value


def _listeners_online(relay, name: str, count: int):
    async def check() -> bool:
        return len(relay.relay.router.listeners(relay.relay.hc_key(name))) == count
    return check


async def _after_read(stream: Sse, condition) -> bool:
    if condition():
        return True
    await stream.next(5)
    return condition()
