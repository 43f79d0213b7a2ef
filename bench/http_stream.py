"""Streaming client for http_bench.py, run in its own process: ``python bench/http_stream.py '<json spec>'``.

* ``{"mode": "upload", "url": ..., "bytes": N}``: POST an N-byte chunked body (256 KiB chunks of
  one buffer, ``Transfer-Encoding: chunked``, no Content-Length) and read the answer, which must
  be the byte count the other end saw.
* ``{"mode": "download", "url": ..., "bytes": N}``: GET and read the body to its end, discarding it.

Prints one JSON line: ``bytes`` moved, ``secs`` from the first byte sent (upload) or the request
(download) to the end of the answer, ``status``, ``client_cpu`` and ``ok`` (right count, 200).
"""

from __future__ import annotations

import json
import os
import sys
import time

import aiohttp
import uvloop

CHUNK = 256 * 1024


async def upload(spec: dict) -> dict:
    total = spec["bytes"]
    block = os.urandom(CHUNK)
    sent = 0

    async def body():  # type: ignore[no-untyped-def]
        nonlocal sent
        while sent < total:
            piece = block if total - sent >= CHUNK else block[:total - sent]
            sent += len(piece)
            yield piece

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
        t0 = time.perf_counter()
        async with session.post(spec["url"], data=body(),
                                headers={"Content-Type": "application/octet-stream"}) as resp:
            text = await resp.text()
            secs = time.perf_counter() - t0
    seen = int(text.strip()) if text.strip().isdigit() else -1
    return {"bytes": sent, "secs": secs, "status": resp.status, "seen": seen,
            "ok": resp.status == 200 and seen == total, "answer": text[:200]}


async def download(spec: dict) -> dict:
    total = spec["bytes"]
    got = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
                                     auto_decompress=False) as session:
        t0 = time.perf_counter()
        async with session.get(f"{spec['url']}?bytes={total}") as resp:
            async for chunk in resp.content.iter_any():
                got += len(chunk)
            secs = time.perf_counter() - t0
    return {"bytes": got, "secs": secs, "status": resp.status, "seen": got,
            "ok": resp.status == 200 and got == total, "answer": ""}


def main() -> None:
    spec = json.loads(sys.argv[1])
    fn = upload if spec["mode"] == "upload" else download
    c0 = os.times()
    result = uvloop.run(fn(spec))
    c1 = os.times()
    result["client_cpu"] = (c1.user - c0.user) + (c1.system - c0.system)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
