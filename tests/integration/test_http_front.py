"""The relay's own HTTP/1.1 front end (server/httpconn.py), driven over raw sockets.

Keep-alive, pipelining, the hand-over to the aiohttp application mid-connection, framing of
streamed answers, and the bad input that only a connection-level server sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from hyrelay.server import httpconn

from .test_http_relay import RawHttpListener


async def echo(listener, request, body):
    await listener.respond(request, body=f"{request['method']} {request['requestTarget']} {len(body)}".encode())


class Conn:
    """One raw client connection that reads responses one at a time (Content-Length, chunked or close)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, relay) -> AsyncIterator["Conn"]:
        """A connection to the relay, closed on the way out."""
        conn = cls(*await asyncio.open_connection("127.0.0.1", relay.port))
        try:
            yield conn
        finally:
            conn.writer.close()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, *, head_only: bool = False) -> tuple[int, str, dict[str, str], bytes]:
        line = (await asyncio.wait_for(self.reader.readline(), 10)).decode("latin-1")
        assert line.startswith("HTTP/1.1 "), line
        _, status, reason = line.rstrip("\r\n").split(" ", 2)
        headers: dict[str, str] = {}
        while (field := (await self.reader.readline()).decode("latin-1").rstrip("\r\n")):
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only:
            return int(status), reason, headers, b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await asyncio.wait_for(self.reader.read(), 10)
        return int(status), reason, headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: relay.test", *extra]) + "\r\n\r\n").encode()


async def test_keep_alive_pipelining_and_hand_over_to_the_relay_endpoints(relay):
    relay.create_hc("front", requires_client_authorization=False)
    async with RawHttpListener(relay, "front", echo):
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/a"))
            assert (await conn.response())[3] == b"GET /front/a 0"
            # Three requests in one write: answered in order, each once.
            conn.send(get("/front/1") + get("/front/2") + b"POST /front/3 HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 5\r\n\r\nhello")
            bodies = [(await conn.response())[3] for _ in range(3)]
            assert bodies == [b"GET /front/1 0", b"GET /front/2 0", b"POST /front/3 5"]
            # A /$ endpoint on the same connection: handed to the application, which serves the rest.
            conn.send(get("/$health"))
            status, _, _, body = await conn.response()
            assert status == 200 and json.loads(body)["status"] == "ok"
            conn.send(get("/front/after"))
            status, _, headers, body = await conn.response()
            assert status == 200 and body == b"GET /front/after 0" and "via" in headers


async def test_chunked_and_large_bodies_are_handed_over_and_still_relayed(relay):
    relay.create_hc("front", requires_client_authorization=False)
    async with RawHttpListener(relay, "front", echo):
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/first"))
            assert (await conn.response())[0] == 200
            conn.send(b"POST /front/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            assert (await conn.response())[3] == b"POST /front/chunked 11"
            big = b"x" * 100_000  # over the control channel's 64 KiB: goes by rendezvous
            conn.send(b"PUT /front/big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + big)
            assert (await conn.response())[3] == b"PUT /front/big 100000"


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /front/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GET /front/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET /front/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000, 431),  # no end of head in sight
])
async def test_bad_second_request_gets_its_status_with_a_tracking_id_and_a_close(relay, request_bytes, status):
    relay.create_hc("front", requires_client_authorization=False)
    async with RawHttpListener(relay, "front", echo):
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/ok"))
            assert (await conn.response())[0] == 200
            conn.send(request_bytes)
            got, reason, headers, body = await conn.response()
            assert got == status and "TrackingId:" in reason
            assert json.loads(body)["error"]["trackingId"] == headers["trackingid"]
            assert headers["connection"] == "close" and await conn.closed()
        # Everyone else goes on being served.
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/still"))
            assert (await conn.response())[3] == b"GET /front/still 0"


async def test_errors_keep_the_connection_alive(relay):
    relay.create_hc("front", requires_client_authorization=False)
    relay.create_hc("nobody", requires_client_authorization=False)
    async with RawHttpListener(relay, "front", echo):
        async with Conn.connect(relay) as conn:
            for path, status in (("/missing", 404), ("/nobody/x", 502), ("/front/x", 200)):
                conn.send(get(path))
                got, reason, headers, body = await conn.response()
                assert got == status, (path, reason)
                if status != 200:
                    assert "TrackingId:" in reason and "via" not in headers


async def test_streamed_answers_are_chunked_for_1_1_and_close_delimited_for_1_0(relay):
    relay.create_hc("stream", requires_client_authorization=False)

    async def stream(listener, request, body):
        doc = {"requestId": request["id"], "statusCode": 200, "responseHeaders": {"X-A": "1"}, "body": True}
        await listener.control.send(json.dumps({"response": doc}))
        await listener.control.send(listener.fragments())

    async def fragments():
        for part in (b"one,", b"two,", b"three"):
            yield part

    async with RawHttpListener(relay, "stream", stream) as listener:
        listener.fragments = fragments
        async with Conn.connect(relay) as conn:
            conn.send(get("/stream/a"))
            _, _, headers, body = await conn.response()
            assert headers["transfer-encoding"] == "chunked" and body == b"one,two,three"
        async with Conn.connect(relay) as conn:
            conn.send(b"GET /stream/b HTTP/1.0\r\nHost: x\r\n\r\n")
            _, _, headers, body = await conn.response()
            assert "transfer-encoding" not in headers and "content-length" not in headers
            assert headers["connection"] == "close" and body == b"one,two,three"


async def test_head_answers_carry_the_listeners_length_and_one_date(relay):
    relay.create_hc("meta", requires_client_authorization=False)

    async def answer(listener, request, body):
        headers = {"Content-Length": "1234"}
        if request["requestTarget"].endswith("/dated"):
            headers["Date"] = "Tue, 01 Jan 2030 00:00:00 GMT"
        await listener.respond(request, body=None, responseHeaders=headers)

    async with RawHttpListener(relay, "meta", answer):
        async with Conn.connect(relay) as conn:
            conn.send(b"HEAD /meta/x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, headers, _ = await conn.response(head_only=True)
            assert status == 200 and headers["content-length"] == "1234" and headers["date"]
            conn.send(get("/meta/dated"))
            raw_status, _, headers, body = await conn.response()
            assert headers["date"] == "Tue, 01 Jan 2030 00:00:00 GMT" and body == b""


async def test_listener_that_drops_after_the_head_gives_502_not_a_truncated_200(relay):
    relay.create_hc("dropper", requires_client_authorization=False)

    async def head_then_drop(listener, request, body):
        doc = {"requestId": request["id"], "statusCode": 200, "responseHeaders": {}, "body": True}
        await listener.control.send(json.dumps({"response": doc}))
        await listener.control.close()

    async with RawHttpListener(relay, "dropper", head_then_drop):
        async with Conn.connect(relay) as conn:
            conn.send(get("/dropper/x"))
            status, reason, _, body = await conn.response()
            assert status == 502 and "TrackingId:" in reason and "disconnected" in json.loads(body)["error"]["message"]


async def test_idle_keep_alive_connections_are_closed(relay, monkeypatch):
    monkeypatch.setattr(httpconn, "KEEPALIVE", 0.3)
    relay.create_hc("front", requires_client_authorization=False)
    async with RawHttpListener(relay, "front", echo):
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/x"))
            assert (await conn.response())[0] == 200
            assert await conn.closed()  # nothing more came: the relay let the connection go
        async with Conn.connect(relay) as conn:  # half a request counts as nothing: 408, then the close
            conn.send(get("/front/x"))
            assert (await conn.response())[0] == 200
            conn.send(b"GET /front/y HTTP/1.1\r\nHo")
            status, reason, _, _ = await conn.response()
            assert status == 408 and "TrackingId:" in reason and await conn.closed()


async def test_a_client_that_shuts_its_sending_side_still_gets_its_answers(relay):
    relay.create_hc("front", requires_client_authorization=False)
    async with RawHttpListener(relay, "front", echo):
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/one") + get("/front/two"))
            conn.writer.write_eof()
            assert (await conn.response())[3] == b"GET /front/one 0"
            assert (await conn.response())[3] == b"GET /front/two 0"
            assert await conn.closed()


async def test_a_shorter_request_timeout_after_a_longer_one_on_the_same_connection(relay):
    relay.create_hc("front", requires_client_authorization=False)  # the relay's 60 s default
    relay.store.create_hc("hyrelay", "silent", requires_client_authorization=False, request_timeout=0.5)
    relay.relay.refresh()

    async def never(listener, request, body):
        await asyncio.sleep(3600)

    async with RawHttpListener(relay, "front", echo), RawHttpListener(relay, "silent", never):
        async with Conn.connect(relay) as conn:
            conn.send(get("/front/quick"))  # arms the connection's timer for 60 s from now
            assert (await conn.response())[0] == 200
            conn.send(get("/silent/x"))  # must not wait for that timer
            status, reason, _, _ = await conn.response()
            assert status == 504 and "did not respond" in reason
            conn.send(get("/front/again"))  # and the connection goes on
            assert (await conn.response())[3] == b"GET /front/again 0"


async def test_a_timer_armed_for_a_short_timeout_does_not_cut_a_later_longer_one(relay):
    relay.store.create_hc("hyrelay", "brisk", requires_client_authorization=False, request_timeout=0.3)
    relay.create_hc("slow", requires_client_authorization=False)
    relay.relay.refresh()

    async def late(listener, request, body):
        await asyncio.sleep(1.0)  # past the brisk deadline the connection's timer was armed for
        await listener.respond(request, body=b"late but fine")

    async with RawHttpListener(relay, "brisk", echo), RawHttpListener(relay, "slow", late):
        async with Conn.connect(relay) as conn:
            conn.send(get("/brisk/x"))
            assert (await conn.response())[0] == 200
            conn.send(get("/slow/x"))
            status, _, _, body = await conn.response()
            assert status == 200 and body == b"late but fine"


async def test_http_1_0_keep_alive_is_confirmed_and_honoured(relay):
    relay.create_hc("front", requires_client_authorization=False)
    async with RawHttpListener(relay, "front", echo):
        async with Conn.connect(relay) as conn:
            for path in ("/front/a", "/front/b"):
                conn.send(f"GET {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".encode())
                _, _, headers, body = await conn.response()
                assert headers["connection"] == "keep-alive" and body == f"GET {path} 0".encode()
            conn.send(b"GET /front/c HTTP/1.0\r\nHost: x\r\n\r\n")  # no keep-alive asked: answered, then closed
            _, _, headers, body = await conn.response()
            assert headers["connection"] == "close" and body == b"GET /front/c 0" and await conn.closed()
