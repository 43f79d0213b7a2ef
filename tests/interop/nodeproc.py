"""Run the official Node clients (tests/interop/node) as child processes and read their event lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

NODE_DIR = Path(__file__).parent / "node"


def node_ready() -> str | None:
    """Why the Node clients cannot run, or None when they can."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    for pkg in ("hyco-ws", "hyco-https"):
        if not (NODE_DIR / "node_modules" / pkg / "package.json").exists():
            return f"{pkg} is not installed: run `npm ci` in {NODE_DIR}"
    return None


class NodeProc:
    """One script run: its JSON event lines as they arrive, and its exit status."""

    def __init__(self, proc: asyncio.subprocess.Process, script: str) -> None:
        self.proc = proc
        self.script = script
        self.events: list[dict] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.stderr = b""

    @classmethod
    async def start(cls, script: str, relay_ws: str, path: str, key_name: str, key: str,
                    *args: str, env: dict[str, str] | None = None) -> "NodeProc":
        proc = await asyncio.create_subprocess_exec(
            "node", script, f"--relay={relay_ws}", f"--path={path}", f"--keyrule={key_name}", f"--key={key}",
            *args, cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})})
        return cls(proc, script)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self._new.set()
        self._new.set()

    async def wait_event(self, name: str, timeout: float = 20, **match: object) -> dict:
        """The first event called *name* (with the given field values), waiting for it if needed."""
        async def find() -> dict:
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                        return event
                seen = len(self.events)
                if self._reader.done():
                    raise AssertionError(f"{self.script} ended without {name} {match}: {self.events[-10:]} "
                                         f"stderr={self.stderr[-2000:]!r}")
                self._new.clear()
                await self._new.wait()
        return await asyncio.wait_for(find(), timeout)

    def all(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    async def wait_exit(self, timeout: float = 60) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()
        return code

    async def stop(self) -> int:
        """SIGTERM (the scripts close cleanly on it), then kill if it lingers."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return await self.wait_exit(10)
            except asyncio.TimeoutError:
                self.proc.kill()
        return await self.wait_exit(10)
