"""Load client for relay_bench.py, run in its own process: ``python bench/_load.py '<json spec>'``.

Prints one JSON line with the result. Modes (``spec["mode"]``):

* ``tput``  a one-way stream of ``size``-byte binary messages sender -> receiver, with at most
            ``window`` messages in flight: the receiver sends an 8-byte ack every ``ack_every``
            messages and the sender sends that many more per ack. Identical client code for
            every target; only the way the two ends get connected differs.
* ``hs``    new connections per second: ``conc`` loops each doing connect -> 101 -> Close
            exchange -> TCP close, with raw asyncio protocols (a full WebSocket client costs more
            CPU than the server side of a handshake and would be the bottleneck).
* ``idle``  open ``count`` idle connections and report the server's RSS growth per connection.

Targets: ``relay`` (hyrelay: listener control channel + connect + rendezvous), ``pump`` (the
bare pump: ``/a/<id>`` + ``/b/<id>``), ``direct`` (tput only: sender -> sink server).
Server CPU is utime+stime from ``/proc/<server_pid>/stat`` over the measured window.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

HOST = "127.0.0.1"
SRC = Path(__file__).resolve().parents[1] / "src"
ACK = b"ack!ack!"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# A masked Close frame with code 1000 (mask 0x01020304).
_MASK = bytes((1, 2, 3, 4))
MASKED_CLOSE = bytes((0x88, 0x82)) + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(b"\x03\xe8"))


# -- process figures ----------------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """utime + stime of *pid*, seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    """VmRSS of *pid*, bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def system_busy() -> tuple[float, float]:
    """CPU seconds all CPUs spent (user+nice+system+steal, irq+softirq) since boot."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Window:
    """Server and client CPU plus wall time between start() and stop()."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid

    def start(self) -> None:
        self.t0, self.s0, self.c0, self.b0 = time.perf_counter(), proc_cpu(self.pid), self_cpu(), system_busy()

    def stop(self) -> dict:
        dt = time.perf_counter() - self.t0
        server, client = proc_cpu(self.pid) - self.s0, self_cpu() - self.c0
        busy, irq = system_busy()
        # Other processes (and steal) kept the CPUs busy this long: a noise indicator. Interrupt
        # time (loopback TCP runs in softirq) is not charged to any process, so it is kept apart.
        other = max(0.0, busy - self.b0[0] - server - client)
        return {"secs": dt, "server_cpu": server, "client_cpu": client, "other_cpu": other,
                "irq_cpu": irq - self.b0[1]}


def token_for(spec: dict, name: str) -> str:
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from hyrelay.protocol.sas import build_token

    return build_token(f"ws://{HOST}:{spec['port']}/$hc/{name}", spec["rule"], spec["key"],
                       int(time.time()) + 3600)


def upgrade_request(port: int, target: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {HOST}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {WS_KEY}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- throughput -----------------------------------------------------------------------------
class Sender(WSListener):
    def __init__(self, payload: bytes | list[bytes], window: int, ack_every: int) -> None:
        #: One payload, or (verify mode) a list sent round-robin so the receiver can check content.
        self.payloads = payload if isinstance(payload, list) else None
        self.sent = 0
        self.payload = payload[0] if isinstance(payload, list) else payload
        self.window = window
        self.ack_every = ack_every
        self.acked = 0
        self.t: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport

    def pause_writing(self) -> None:  # the window bounds what is in flight
        pass

    def resume_writing(self) -> None:
        pass

    def _send_n(self, n: int) -> None:
        send = self.t.send  # type: ignore[union-attr]
        if self.payloads is None:
            payload = self.payload
            for _ in range(n):
                send(WSMsgType.BINARY, payload)
        else:
            payloads, k = self.payloads, len(self.payloads)
            for _ in range(n):
                send(WSMsgType.BINARY, payloads[self.sent % k])
                self.sent += 1

    def start(self) -> None:
        self._send_n(self.window)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.BINARY:
            self.acked += self.ack_every
            self._send_n(self.ack_every)
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()


class Receiver(WSListener):
    def __init__(self, ack_every: int, expect: list[bytes] | None = None) -> None:
        self.ack_every = ack_every
        self.n = 0
        self.t: WSTransport | None = None
        #: Verify mode: the payloads in the order they were sent, and how many arrived different.
        self.expect = expect
        self.corrupt = 0
        self.first_corrupt: str | None = None
        self.error: str | None = None

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is WSMsgType.BINARY or msg_type is WSMsgType.CONTINUATION:
            if self.expect is not None:
                want = self.expect[self.n % len(self.expect)]
                got = frame.get_payload_as_bytes()
                if got != want:
                    self.corrupt += 1
                    if self.first_corrupt is None:
                        at = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
                        self.first_corrupt = (f"message {self.n}: {len(got)} bytes (want {len(want)}), "
                                              f"first difference at byte {at}")
            if frame.fin:
                self.n += 1
                if self.n % self.ack_every == 0:
                    transport.send(WSMsgType.BINARY, ACK)
        elif msg_type is WSMsgType.CLOSE:
            transport.send(WSMsgType.CLOSE, frame.get_payload_as_memoryview())
            transport.disconnect()


class Control(WSListener):
    """A listener's control channel: opens a rendezvous for every accept message."""

    def __init__(self, on_accept) -> None:  # type: ignore[no-untyped-def]
        self.on_accept = on_accept
        self.t: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            msg = json.loads(frame.get_payload_as_bytes())
            if "accept" in msg:
                self.on_accept(msg["accept"]["address"])


async def connect_pair(spec: dict, sender_factory, receiver_factory):  # type: ignore[no-untyped-def]
    """Connect a sender and a receiver through the target; returns (sender, receiver, extras)."""
    port, target = spec["port"], spec["target"]
    base = f"ws://{HOST}:{port}"
    if target == "direct":
        _, snd = await ws_connect(sender_factory, f"{base}/sink/{spec['ack_every']}")
        return snd, None, []
    if target in ("pump", "dpump"):
        cid = uuid.uuid4().hex
        (_, snd), (_, rcv) = await asyncio.gather(ws_connect(sender_factory, f"{base}/a/{cid}"),
                                                  ws_connect(receiver_factory, f"{base}/b/{cid}"))
        return snd, rcv, []
    name = "bench"
    auth = {"ServiceBusAuthorization": token_for(spec, name)}
    loop = asyncio.get_running_loop()
    rendezvous: asyncio.Future = loop.create_future()

    def on_accept(address: str) -> None:
        async def go() -> None:
            try:
                _, rcv = await ws_connect(receiver_factory, address)
                rendezvous.set_result(rcv)
            except Exception as exc:  # noqa: BLE001
                rendezvous.set_exception(exc)
        asyncio.ensure_future(go())

    ctl_t, ctl = await ws_connect(lambda: Control(on_accept), f"{base}/$hc/{name}?sb-hc-action=listen",
                                  extra_headers=auth)
    _, snd = await ws_connect(sender_factory, f"{base}/$hc/{name}?sb-hc-action=connect", extra_headers=auth)
    rcv = await asyncio.wait_for(rendezvous, 10)
    return snd, rcv, [ctl_t]


def dump_state(snd, rcv) -> None:  # type: ignore[no-untyped-def]
    """Diagnostic: the client side's view of a stalled stream."""
    def tstate(t):  # type: ignore[no-untyped-def]
        u = t.underlying_transport
        return {"write_buffer": u.get_write_buffer_size(), "reading": getattr(u, "is_reading", lambda: None)(),
                "closing": u.is_closing(), "disconnected": t.is_disconnected}
    sys.stderr.write("STALL client " + json.dumps({
        "sender": {"acked": snd.acked, **tstate(snd.t)},
        "receiver": ({"received": rcv.n, **tstate(rcv.t)} if rcv else None)}) + "\n")


async def tput(spec: dict) -> dict:
    size, window, ack_every = spec["size"], spec["window"], spec["ack_every"]
    verify = bool(spec.get("verify"))
    payload: bytes | list[bytes] = [os.urandom(size) for _ in range(7)] if verify else os.urandom(size)
    snd, rcv, extras = await connect_pair(
        spec, lambda: Sender(payload, window, ack_every),
        lambda: Receiver(ack_every, payload if verify else None))  # type: ignore[arg-type]
    snd.start()
    await asyncio.sleep(spec["warm"])
    win = Window(spec["server_pid"])
    a0 = snd.acked
    win.start()
    # Sample progress every 50 ms: the longest gap with no ack shows a stall inside the window.
    end = time.perf_counter() + spec["secs"]
    last, last_t, longest = snd.acked, time.perf_counter(), 0.0
    while (now := time.perf_counter()) < end:
        await asyncio.sleep(min(0.05, end - now))
        now = time.perf_counter()
        if snd.acked != last:
            last, last_t = snd.acked, now
        longest = max(longest, now - last_t)
    res = win.stop()
    msgs = snd.acked - a0
    res.update(msgs=msgs, bytes=msgs * size, longest_gap=longest)
    if verify and rcv is not None:
        res.update(received=rcv.n, corrupt=rcv.corrupt, first_corrupt=rcv.first_corrupt,
                   receiver_disconnected=rcv.t.is_disconnected)
    if longest > 0.2 and spec.get("debug"):
        dump_state(snd, rcv)
    for t in [snd.t] + ([rcv.t] if rcv else []) + extras:
        t.disconnect()
    await asyncio.sleep(0.05)
    return res


# -- handshakes -----------------------------------------------------------------------------
class Raw(asyncio.Protocol):
    """A bare client WebSocket: sends a pre-built upgrade, answers a Close with a Close."""

    __slots__ = ("req", "t", "buf", "opened", "closed", "status", "got_close", "reply_close")

    def __init__(self, req: bytes, reply_close: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.req = req
        self.buf = b""
        self.opened: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()
        self.status = 0
        self.got_close = False
        self.reply_close = reply_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        transport.write(self.req)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.buf[9:12])
            rest = self.buf[end + 4:]
            self.buf = b""
            self.opened.set_result(self.status)
            if self.status != 101:
                self.t.close()
                return
            data = rest
        if data and data[0] == 0x88 and not self.got_close:
            self.got_close = True
            if self.reply_close:
                self.t.write(MASKED_CLOSE)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(0)
        if not self.closed.done():
            self.closed.set_result(None)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def hs(spec: dict) -> dict:
    loop = asyncio.get_running_loop()
    port, target = spec["port"], spec["target"]
    ctl_ts = []
    if target == "relay":
        name = spec.get("hc", "bench")
        auth = {"ServiceBusAuthorization": token_for(spec, name)}
        req_connect = upgrade_request(port, f"/$hc/{name}?sb-hc-action=connect",
                                      None if spec.get("no_sender_token") else auth)

        def on_accept(address: str) -> None:
            parts = urlsplit(address)
            req = upgrade_request(port, f"{parts.path}?{parts.query}")
            asyncio.ensure_future(loop.create_connection(lambda: Raw(req), HOST, port))

        for _ in range(spec.get("listeners", 2)):
            t, _ = await ws_connect(lambda: Control(on_accept), f"ws://{HOST}:{port}/$hc/{name}?sb-hc-action=listen",
                                    extra_headers=auth)
            ctl_ts.append(t)

        async def cycle() -> float | None:
            t0 = time.perf_counter()
            tr, p = await loop.create_connection(lambda: Raw(req_connect), HOST, port)
            if await p.opened != 101:
                await p.closed
                return None
            setup = time.perf_counter() - t0
            tr.write(MASKED_CLOSE)
            await p.closed
            return setup if p.got_close else None
    else:
        counter = iter(range(1 << 62))
        prefix = uuid.uuid4().hex[:8]

        async def cycle() -> float | None:
            cid = f"{prefix}{next(counter)}"
            t0 = time.perf_counter()
            (ta, pa), (_, pb) = await asyncio.gather(
                loop.create_connection(lambda: Raw(upgrade_request(port, f"/a/{cid}")), HOST, port),
                loop.create_connection(lambda: Raw(upgrade_request(port, f"/b/{cid}")), HOST, port))
            if await pa.opened != 101 or await pb.opened != 101:
                ta.close()
                await pa.closed
                return None
            setup = time.perf_counter() - t0
            ta.write(MASKED_CLOSE)
            await pa.closed
            return setup if pa.got_close else None

    warm_end = time.perf_counter() + spec["warm"]
    end = warm_end + spec["secs"]
    setups: list[float] = []
    stats = {"ok": 0, "errors": 0}
    win = Window(spec["server_pid"])

    async def worker() -> None:
        while True:
            now = time.perf_counter()
            if now >= end:
                return
            counted = now >= warm_end
            try:
                setup = await cycle()
            except OSError:
                setup = None
            if counted and time.perf_counter() <= end and not stopped:
                if setup is None:
                    stats["errors"] += 1
                else:
                    stats["ok"] += 1
                    setups.append(setup)

    res: dict = {}
    stopped = False

    async def timer() -> None:
        nonlocal stopped
        await asyncio.sleep(max(0.0, warm_end - time.perf_counter()))
        win.start()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        res.update(win.stop())
        stopped = True

    # Only cycles that start after the warm-up and finish inside the window count.
    await asyncio.gather(timer(), *(worker() for _ in range(spec["conc"])))
    res.update(stats, p50_ms=percentile(setups, 0.5) * 1e3, p99_ms=percentile(setups, 0.99) * 1e3)
    for t in ctl_ts:
        t.disconnect()
    await asyncio.sleep(0.05)
    return res


# -- idle memory ----------------------------------------------------------------------------
async def idle(spec: dict) -> dict:
    loop = asyncio.get_running_loop()
    port, target, count = spec["port"], spec["target"], spec["count"]
    pid = spec["server_pid"]
    if target == "relay":
        per_hc = spec["per_hc"]
        hcs = (count + 20 + per_hc - 1) // per_hc
        reqs = []
        for i in range(hcs):
            name = f"idle{i}"
            req = upgrade_request(port, f"/$hc/{name}?sb-hc-action=listen",
                                  {"ServiceBusAuthorization": token_for(spec, name)})
            reqs += [req] * per_hc
    else:
        prefix = uuid.uuid4().hex[:8]
        reqs = [upgrade_request(port, f"/a/{prefix}{i}") for i in range(count + 20)]
    held = []
    sem = asyncio.Semaphore(64)

    async def open_one(req: bytes) -> None:
        async with sem:
            tr, p = await loop.create_connection(lambda: Raw(req, reply_close=False), HOST, port)
            if await p.opened != 101:
                raise RuntimeError(f"idle connection refused with status {p.status}")
            held.append(tr)

    # Warm-up connections, so one-time allocations are in the baseline.
    await asyncio.gather(*(open_one(r) for r in reqs[:20]))
    await asyncio.sleep(0.5)
    rss0 = proc_rss(pid)
    if spec.get("poke"):  # diagnostic: the server snapshots its allocations on SIGUSR1
        os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(1.0)
    t0 = time.perf_counter()
    await asyncio.gather(*(open_one(r) for r in reqs[20:20 + count]))
    open_secs = time.perf_counter() - t0
    await asyncio.sleep(spec.get("hold", 1.5))
    rss1 = proc_rss(pid)
    if spec.get("poke"):
        os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(3.0)
    alive = sum(1 for t in held if not t.is_closing())
    for t in held:
        t.abort()
    await asyncio.sleep(0.1)
    return {"rss0": rss0, "rss1": rss1, "count": count, "alive": alive - 20, "open_secs": open_secs,
            "kib_per_conn": (rss1 - rss0) / count / 1024}


def main() -> None:
    spec = json.loads(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fn = {"tput": tput, "hs": hs, "idle": idle}[spec["mode"]]
    result = uvloop.run(fn(spec))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
