"""Serve an ASGI 3 application (Starlette, FastAPI, Django's ASGI app, ...) through the relay.

::

    handler = AsgiHandler(app)
    async with handler:                     # runs the app's lifespan startup and shutdown
        listener = HybridConnectionListener(cs, entity="api", request_handler=handler)
        async with listener:
            await listener.wait_closed()

or simply ``await serve_asgi(app, listener)``.

The app sees ``root_path`` = ``/{hc}`` and, as the ASGI spec asks, a ``path`` that includes it, so
routing strips the hybrid connection's name and ``url_for`` builds URLs that work through the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .http import ClientDisconnected, RelayedRequest, RelayedResponse

if TYPE_CHECKING:
    from .listener import HybridConnectionListener

__all__ = ["AsgiHandler", "serve_asgi", "LifespanFailed"]

_log = logging.getLogger("hyrelay.client")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# 2.4: ``send`` raises OSError once the client is gone, so apps need not poll ``receive`` for it.
_ASGI = {"version": "3.0", "spec_version": "2.4"}


class LifespanFailed(RuntimeError):
    """The app reported ``lifespan.startup.failed`` (or ``shutdown.failed``)."""


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")  # JSON can carry any text; keep it rather than fail the request


class AsgiHandler:
    """A ``request_handler`` that runs an ASGI 3 HTTP application.

    Args:
        app: the ASGI application.
        lifespan: ``"auto"`` runs the lifespan protocol when the app supports it, ``"on"`` requires
            it to succeed, ``"off"`` skips it. It runs in ``async with handler:`` (or ``startup()``
            and ``shutdown()``).
        stream_content_types: responses of these media types are flushed at every body message,
            so events reach the client at once instead of after the flush interval.
    """

    def __init__(self, app: AsgiApp, *, lifespan: str = "auto",
                 stream_content_types: tuple[str, ...] = ("text/event-stream",)) -> None:
        if lifespan not in ("auto", "on", "off"):
            raise ValueError("lifespan must be 'auto', 'on' or 'off'")
        self.app = app
        self.lifespan = lifespan
        self.stream_content_types = stream_content_types
        #: The lifespan state; each request scope gets a shallow copy (ASGI lifespan state).
        self.state: dict[str, Any] = {}
        self._lifespan_task: asyncio.Task[None] | None = None
        self._lifespan_in: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan_out: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan_supported = False

    # -- lifespan -------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Run the app's lifespan startup.

        Raises:
            LifespanFailed: the app reported a failed startup, or (``lifespan="on"``) has no lifespan.
        """
        if self.lifespan == "off" or self._lifespan_task is not None:
            return
        scope = {"type": "lifespan", "asgi": dict(_ASGI), "state": self.state}
        self._lifespan_task = asyncio.create_task(self._run_lifespan(scope))
        await self._lifespan_in.put({"type": "lifespan.startup"})
        message = await self._lifespan_out.get()
        if message["type"] == "lifespan.startup.complete":
            self._lifespan_supported = True
            _log.info("event=asgi_lifespan_started")
            return
        if message["type"] == "lifespan.startup.failed":
            raise LifespanFailed(f"ASGI startup failed: {message.get('message', '')}")
        # The app raised or returned at once: it does not do lifespan.
        if self.lifespan == "on":
            raise LifespanFailed(f"the ASGI app does not support lifespan: {message.get('message', '')}")
        _log.debug("event=asgi_lifespan_unsupported detail=%r", message.get("message", ""))

    async def shutdown(self) -> None:
        """Run the app's lifespan shutdown (after a successful startup).

        Raises:
            LifespanFailed: the app reported a failed shutdown.
        """
        task, self._lifespan_task = self._lifespan_task, None
        if task is None:
            return
        if not self._lifespan_supported or task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return
        await self._lifespan_in.put({"type": "lifespan.shutdown"})
        message = await self._lifespan_out.get()
        with contextlib.suppress(BaseException):
            await task
        if message["type"] == "lifespan.shutdown.failed":
            raise LifespanFailed(f"ASGI shutdown failed: {message.get('message', '')}")
        _log.info("event=asgi_lifespan_stopped")

    async def _run_lifespan(self, scope: Scope) -> None:
        async def send(message: Message) -> None:
            await self._lifespan_out.put(message)

        try:
            await self.app(scope, self._lifespan_in.get, send)
        except Exception as exc:
            # An app without lifespan typically raises on the unknown scope type.
            await self._lifespan_out.put({"type": "lifespan.unsupported", "message": repr(exc)})
        else:
            await self._lifespan_out.put({"type": "lifespan.unsupported", "message": "app returned"})

    async def __aenter__(self) -> "AsgiHandler":
        await self.startup()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.shutdown()

    # -- requests -------------------------------------------------------------------------------
    def scope(self, request: RelayedRequest) -> Scope:
        """The ASGI HTTP scope for *request*."""
        prefix = request.root_path
        scope: Scope = {
            "type": "http",
            "asgi": dict(_ASGI),
            "http_version": request.http_version,
            "method": request.method,
            "scheme": request.scheme,
            # ASGI: path includes root_path; raw_path is the path as sent, hybrid connection included.
            "path": prefix + request.path,
            "raw_path": _latin1(request.target.partition("?")[0]),
            "query_string": _latin1(request.query),
            "root_path": prefix,
            "headers": [(_latin1(name.lower()), _latin1(value)) for name, value in request.headers.items()],
            "client": request.remote_endpoint,
            "server": request.server,
            "extensions": {},
        }
        if self.state:
            scope["state"] = dict(self.state)
        return scope

    async def __call__(self, request: RelayedRequest, response: RelayedResponse) -> None:
        exchange = _Exchange(request, response, self.stream_content_types)
        try:
            await self.app(self.scope(request), exchange.receive, exchange.send)
        finally:
            exchange.ended.set()  # a receive() still waiting learns the exchange is over
        if not exchange.started:
            raise RuntimeError("the ASGI app returned without sending http.response.start")
        if not response.finished:
            await response.end()


class _Exchange:
    """``receive`` and ``send`` for one request."""

    def __init__(self, request: RelayedRequest, response: RelayedResponse,
                 stream_types: tuple[str, ...]) -> None:
        self.request = request
        self.response = response
        self.started = False
        self._stream_types = stream_types
        self._streaming = False
        self._chunks = aiter(request.body) if request.has_body else None
        self._body_done = False
        #: Set when the response has ended or the client is gone.
        self.ended = asyncio.Event()

    async def receive(self) -> Message:
        if not self._body_done:
            if self._chunks is None:
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except ClientDisconnected:
                self._body_done = True
                self.ended.set()
                return {"type": "http.disconnect"}
            if self.request.body.buffered:
                # An inline body is one chunk, complete already: say so and save the app a round.
                self._body_done = True
                return {"type": "http.request", "body": chunk, "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}
        # The body is read: the next event is the end of the exchange (response sent, or client gone).
        await self.ended.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        response = self.response
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            response.status = int(message["status"])
            for name, value in message.get("headers", ()):
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            self._streaming = media in self._stream_types
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body sent before http.response.start")
            if response.finished:
                return
            body = message.get("body", b"")
            try:
                if message.get("more_body", False):
                    await response.write(body)
                    if self._streaming:
                        await response.flush()
                else:
                    await response.end(body)
                    self.ended.set()
            except ClientDisconnected:
                self.ended.set()
                raise
        elif kind == "http.response.trailers":
            pass  # the wire has no trailers
        else:
            raise RuntimeError(f"unsupported ASGI message type {kind!r}")


async def serve_asgi(app: AsgiApp, listener: "HybridConnectionListener", *, lifespan: str = "auto") -> None:
    """Serve *app* on *listener* until the listener closes (or this task is cancelled).

    Runs the lifespan around it, opens the listener if it is not open yet, and closes it on the way out.
    """
    handler = AsgiHandler(app, lifespan=lifespan)
    async with handler:
        listener.request_handler = handler
        opened_here = not listener.opened
        if opened_here:
            await listener.open()
        try:
            await listener.wait_closed()
        finally:
            if opened_here:
                await listener.close()
