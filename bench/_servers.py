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
          auth, no control channel, no head parsing of our own.
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
from pathlib import Path

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

READ_BUFFER = 2048
MAX_FRAME = 16 << 20
DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
ACK = b"ack!ack!"


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
                    peer.t.send(msg_type, frame.get_payload_as_memoryview(), frame.fin)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("relay", "pump", "direct"))
    parser.add_argument("--hcs", type=int, default=0, help="relay: number of idleN HCs to create")
    parser.add_argument("--profile", help="write cProfile stats of the whole run here")
    args = parser.parse_args()
    raise_nofile()
    run = {"relay": run_relay, "pump": run_pump, "direct": run_direct}[args.kind]
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
        try:
            uvloop.run(run(args))
        finally:
            prof.disable()
            prof.dump_stats(args.profile)
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
