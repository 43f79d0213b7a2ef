"""Server processes for relay_bench.py: hyrelay itself and the two anchors.

    python bench/_servers.py relay  [--hcs N] [--profile FILE]
    python bench/_servers.py pump   [--profile FILE]
    python bench/_servers.py direct

Each prints one JSON line ``{"pid": ..., "port": ...}`` (the relay adds its root rule name and
key) once it listens, then serves until SIGTERM/SIGINT.

* relay:  hyrelay's RelayServer with HCs ``bench`` and ``idle0`` .. ``idle{N-1}``.
* pump:   the bare frame pump: ``/a/<id>`` and ``/b/<id>`` are paired and frames go across with
          FIN bits kept and pause/resume back-pressure. Same library and settings as hyrelay's
          engine (picows, uvloop transports, read_buffer_init_size=2048, 16 MiB frames); no
          auth, no control channel, no head parsing of our own. Payloads over 8 KiB are copied
          before forwarding (see PumpEnd.on_ws_frame for why).
* dpump:  diagnostic: the pump behind an asyncio Protocol that reads the head and calls
          hyrelay's engine.adopt(), i.e. hyrelay's way of taking over a connection.
* direct: no relay at all: ``/sink/<n>`` swallows messages and sends an 8-byte ack every n
          messages, which is what the receiving client does in the relayed runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

READ_BUFFER = 2048
MAX_FRAME = 16 << 20
DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
ACK = b"ack!ack!"
#: Payloads bigger than this are forwarded as a copy (see PumpEnd.on_ws_frame); --zero-copy
#: (diagnostic, unsafe) forwards every payload as a view, as hyrelay's pump does today.
COPY_ABOVE = [8192]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def announce(info: dict) -> None:
    info["pid"] = os.getpid()
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# -- hyrelay ----------------------------------------------------------------------------------
async def run_relay(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hyrelay.server.app import RelayServer
    from hyrelay.server.config import RelayConfig

    logging.basicConfig(level=logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="hyrelay-bench-")
    try:
        srv = RelayServer(RelayConfig(port=0, data_dir=Path(tmp), log_level="WARNING"))
        await srv.start()
        assert srv.store is not None and srv.relay is not None and srv.root_rule is not None
        srv.store.create_hc("hyrelay", "bench")
        # Diagnostic: the same HC without sender authorization (no SAS check on connect).
        srv.store.create_hc("hyrelay", "benchopen", requires_client_authorization=False)
        for i in range(args.hcs):
            srv.store.create_hc("hyrelay", f"idle{i}")
        srv.relay.refresh()
        announce({"port": srv.port, "rule": srv.root_rule.name, "key": srv.root_rule.primary_key})
        await wait_for_signal()
        await srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- bare frame pump --------------------------------------------------------------------------
class PumpEnd(WSListener):
    __slots__ = ("key", "waiting", "peer", "t", "gone", "close_rx", "parked")

    def __init__(self, key: str, waiting: dict[str, "PumpEnd"]) -> None:
        self.key = key
        self.waiting = waiting
        self.peer: PumpEnd | None = None
        self.t: WSTransport | None = None
        self.gone = False
        self.close_rx = False
        self.parked: list[tuple[WSMsgType, bytes, bool]] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport
        peer = self.peer
        if peer is not None and peer.parked:
            # Frames the first end sent before we arrived.
            for msg_type, data, fin in peer.parked:
                transport.send(msg_type, data, fin)
            peer.parked = None
            peer.t.underlying_transport.resume_reading()  # type: ignore[union-attr]

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in DATA:
            peer = self.peer
            if peer is not None and peer.t is not None:
                if not peer.gone:
                    # The payload view points into picows' read buffer, which is reused as soon as
                    # this callback returns. picows copies frames of up to 8 KiB into its own write
                    # buffer, but hands bigger payloads to uvloop's writelines(), which keeps a
                    # reference to the view for whatever it cannot send at once: so copy those.
                    size = frame.payload_size
                    peer.t.send(msg_type, frame.get_payload_as_bytes() if size > COPY_ABOVE[0] else
                                frame.get_payload_as_memoryview(), frame.fin)
            else:
                if self.parked is None:
                    self.parked = []
                self.parked.append((msg_type, frame.get_payload_as_bytes(), frame.fin))
                transport.underlying_transport.pause_reading()
        elif msg_type is WSMsgType.CLOSE:
            if self.close_rx:
                return
            self.close_rx = True
            peer = self.peer
            payload = frame.get_payload_as_memoryview()
            if peer is None or peer.t is None or peer.gone:
                transport.send(WSMsgType.CLOSE, payload)
                transport.disconnect()
                return
            peer.t.send(WSMsgType.CLOSE, payload)
            if peer.close_rx:
                transport.disconnect()
                peer.t.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        if self.peer is None:
            if self.waiting.get(self.key) is self:
                del self.waiting[self.key]
            return
        peer = self.peer
        if not peer.gone and peer.t is not None:
            peer.t.disconnect()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.t is not None:
            self.peer.t.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.t is not None and not self.peer.gone:
            self.peer.t.underlying_transport.resume_reading()


async def run_pump(args: argparse.Namespace) -> None:
    waiting: dict[str, PumpEnd] = {}

    def factory(request):  # type: ignore[no-untyped-def]
        parts = request.path.decode("latin-1").split("?", 1)[0].split("/")
        if len(parts) != 3 or parts[1] not in ("a", "b") or not parts[2]:
            return None  # picows answers 404
        key = parts[2]
        end = PumpEnd(key, waiting)
        other = waiting.pop(key, None)
        if other is None:
            waiting[key] = end
        else:
            end.peer, other.peer = other, end
        return end

    server = await ws_create_server(
        factory, "127.0.0.1", 0, read_buffer_init_size=READ_BUFFER, max_frame_size=MAX_FRAME,
        use_aiofastnet=False, websocket_handshake_timeout=None, backlog=2048, reuse_address=True)
    announce({"port": server.sockets[0].getsockname()[1]})
    await wait_for_signal()
    server.close()


async def run_dpump(args: argparse.Namespace) -> None:
    """Diagnostic: the bare pump, but connections arrive the way hyrelay takes them (an asyncio
    Protocol reads the request head, then hyrelay's engine.adopt() hands the socket to picows)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hyrelay.server import engine

    waiting: dict[str, PumpEnd] = {}

    class Head(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.t, self.buf = transport, b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data if self.buf else data
            if buf.find(b"\r\n\r\n") < 0:
                self.buf = buf
                return
            path = buf[4:buf.find(b" ", 4)].decode("latin-1").split("/")
            key = path[2]
            end = PumpEnd(key, waiting)
            other = waiting.pop(key, None)
            if other is None:
                waiting[key] = end
            else:
                end.peer, other.peer = other, end
            engine.adopt(self.t, buf, end)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Head, "127.0.0.1", 0, backlog=2048, reuse_address=True)
    announce({"port": server.sockets[0].getsockname()[1]})
    await wait_for_signal()
    server.close()


# -- direct sink ------------------------------------------------------------------------------
class Sink(WSListener):
    __slots__ = ("every", "n")

    def __init__(self, every: int) -> None:
        self.every = every
        self.n = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in DATA:
            if frame.fin:
                self.n += 1
                if self.n % self.every == 0:
                    transport.send(WSMsgType.BINARY, ACK)
        elif msg_type is WSMsgType.CLOSE:
            transport.send(WSMsgType.CLOSE, frame.get_payload_as_memoryview())
            transport.disconnect()


async def run_direct(args: argparse.Namespace) -> None:
    def factory(request):  # type: ignore[no-untyped-def]
        parts = request.path.decode("latin-1").split("/")
        if len(parts) == 3 and parts[1] == "sink" and parts[2].isdigit() and int(parts[2]) > 0:
            return Sink(int(parts[2]))
        return None

    server = await ws_create_server(
        factory, "127.0.0.1", 0, read_buffer_init_size=READ_BUFFER, max_frame_size=MAX_FRAME,
        use_aiofastnet=False, websocket_handshake_timeout=None, backlog=2048, reuse_address=True)
    announce({"port": server.sockets[0].getsockname()[1]})
    await wait_for_signal()
    server.close()


def run_profiled(coro: Coroutine[Any, Any, None], profile: str | None, timer: Callable[[], float] | None = None) -> None:
    """Run *coro* on uvloop, under cProfile (stats written to *profile*, timed by *timer*) if asked."""
    if not profile:
        uvloop.run(coro)
        return
    import cProfile
    prof = cProfile.Profile(timer) if timer else cProfile.Profile()
    prof.enable()
    try:
        uvloop.run(coro)
    finally:
        prof.disable()
        prof.dump_stats(profile)


def track_allocations() -> None:
    import tracemalloc

    tracemalloc.start(1)
    base: list = []

    def on_usr1(_signum: int, _frame: object) -> None:
        if base:
            import gc
            sys.stderr.write(f"tracemalloc: gc.collect() freed {gc.collect()} objects first\n")
        snap = tracemalloc.take_snapshot()
        if not base:
            base.append(snap)
            sys.stderr.write("tracemalloc: baseline taken\n")
            return
        stats = snap.compare_to(base[0], "lineno")
        total = sum(s.size_diff for s in stats)
        sys.stderr.write(f"tracemalloc: +{total} bytes in Python objects\n")
        for stat in stats[:18]:
            sys.stderr.write(f"  {stat.size_diff:>10} B {stat.count_diff:>7} blocks  {stat.traceback}\n")
        sys.stderr.flush()

    signal.signal(signal.SIGUSR1, on_usr1)


def instrument_relay() -> None:
    """Diagnostic: accumulate the time spent in the relay's per-connection steps (wrapping, not
    editing, hyrelay's functions) and print it on exit. Wrappers cost ~0.3 µs per call."""
    import atexit
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hyrelay.protocol import sas
    from hyrelay.server import dispatch, engine, pump, relay

    totals: dict[str, list] = {}
    clock = time.perf_counter

    def wrap(owner, name: str, label: str) -> None:  # type: ignore[no-untyped-def]
        fn = getattr(owner, name, None)
        if fn is None:  # the relay's code moved on: time what still exists
            sys.stderr.write(f"instrument: {label} not found, not timed\n")
            return
        acc = totals.setdefault(label, [0.0, 0])

        def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
            t0 = clock()
            try:
                return fn(*a, **kw)
            finally:
                acc[0] += clock() - t0
                acc[1] += 1
        setattr(owner, name, wrapper)

    wrap(dispatch.Dispatch, "data_received", "Dispatch.data_received (all of it)")
    wrap(dispatch, "parse_head", "parse_head")
    wrap(dispatch, "parse_hc_target", "parse_hc_target")
    wrap(relay.Relay, "_connect", "Relay._connect")
    wrap(relay.Relay, "_accept", "Relay._accept (incl. 2 adopts)")
    wrap(relay.Relay, "_listen", "Relay._listen (incl. adopt)")
    wrap(relay, "authorize", "sas.authorize")
    wrap(engine, "adopt", "engine.adopt (picows handshake)")
    wrap(getattr(relay, "ControlChannel", relay), "send_text", "ControlChannel.send_text")
    wrap(pump.PumpEnd, "on_ws_frame", "PumpEnd.on_ws_frame")
    wrap(pump.PumpEnd, "on_ws_disconnected", "PumpEnd.on_ws_disconnected")
    del sas

    def report() -> None:
        sys.stderr.write("instrument " + json.dumps({k: v for k, v in totals.items()}) + "\n")
    atexit.register(report)


def track_gc() -> None:
    import atexit
    import gc
    import time

    spent = {0: 0.0, 1: 0.0, 2: 0.0}
    counts = {0: 0, 1: 0, 2: 0}
    collected = [0]
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            gen = info["generation"]
            spent[gen] += time.process_time() - started[0]
            counts[gen] += 1
            collected[0] += info["collected"]

    gc.callbacks.append(callback)
    atexit.register(lambda: sys.stderr.write("gcstats " + json.dumps(
        {"gc_seconds": sum(spent.values()), "cpu_seconds": time.process_time(), "gc_runs": counts,
         "gc_collected": collected[0]}) + "\n"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("relay", "pump", "direct", "dpump"))
    parser.add_argument("--hcs", type=int, default=0, help="relay: number of idleN HCs to create")
    parser.add_argument("--profile", help="write cProfile stats of the whole run here")
    parser.add_argument("--zero-copy", action="store_true",
                        help="pump, diagnostic: forward every payload as a view into picows' read buffer "
                             "(corrupts payloads over 8 KiB when the destination socket is full)")
    parser.add_argument("--instrument", action="store_true",
                        help="diagnostic: time the relay's per-connection steps (printed on exit)")
    parser.add_argument("--gc-off", action="store_true", help="diagnostic: disable the cyclic GC")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="diagnostic: SIGUSR1 takes a baseline snapshot, the next one prints the growth")
    parser.add_argument("--gcstats", action="store_true",
                        help="on exit, print the time spent in the cyclic garbage collector to stderr")
    args = parser.parse_args()
    raise_nofile()
    if args.zero_copy:
        COPY_ABOVE[0] = 1 << 62
    run = {"relay": run_relay, "pump": run_pump, "direct": run_direct, "dpump": run_dpump}[args.kind]
    if args.gcstats:
        track_gc()
    if args.instrument:
        instrument_relay()
    if args.gc_off:
        import gc
        gc.disable()
    if args.tracemalloc:
        track_allocations()
    run_profiled(run(args), args.profile)


if __name__ == "__main__":
    main()
