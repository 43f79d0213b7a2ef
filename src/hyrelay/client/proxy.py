"""Forward every relayed HTTP request to a local HTTP service: a reverse proxy behind the relay.

::

    async with ProxyHandler("http://127.0.0.1:8000") as proxy:
        async with HybridConnectionListener(cs, entity="web", request_handler=proxy) as listener:
            await listener.wait_closed()

``https://relay/web/api/x?y=1`` becomes ``http://127.0.0.1:8000/api/x?y=1``. Bodies stream both
ways; hop-by-hop headers are dropped; ``Host`` names the target; ``X-Forwarded-For``,
``-Proto``, ``-Host`` and ``-Prefix`` tell the service where the request came from. Redirects
that point into the service are rewritten to point through the relay.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp

from ..protocol.headers import HOP_BY_HOP
from .http import RelayedRequest, RelayedResponse

__all__ = ["ProxyHandler"]

_log = logging.getLogger("hyrelay.client")

#: Reading from the service and writing into the relay happen in pieces of at most this size.
CHUNK = 64 * 1024
#: Headers never forwarded in either direction, besides HOP_BY_HOP (which covers Content-Length:
#: the relay and aiohttp frame bodies themselves). Host is set for the target instead.
_DROP_REQUEST = HOP_BY_HOP | {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                              "x-forwarded-prefix"}
_DROP_RESPONSE = HOP_BY_HOP | {"via"}
#: An answer to HEAD keeps its Content-Length: the length a GET would get.
_DROP_RESPONSE_TO_HEAD = _DROP_RESPONSE - {"content-length"}
#: An upstream answer with a Content-Length up to this is read whole and sent with one end().
WHOLE_BODY = 64 * 1024
_DEFAULT_HEADERS = ("User-Agent", "Accept-Encoding", "Accept")


def _drop_set(base: frozenset[str] | set[str], headers: Mapping[str, str]) -> frozenset[str] | set[str]:
    """*base* plus the names listed in Connection; *base* itself (no copy) when there are none."""
    value = headers.get("Connection")
    if not value:
        return base
    tokens = {token.strip().lower() for token in value.split(",") if token.strip()}
    return base | tokens if tokens else base


class ProxyHandler:
    """A ``request_handler`` that forwards to *target* (``http(s)://host[:port][/base]``).

    Args:
        target: the local service; a path in it is prepended to every forwarded path.
        session: an aiohttp session to use (and not close); by default one is made and owned.
        connect_timeout: seconds to connect to the service before answering 502.
        read_timeout: seconds of silence from the service (per read) before giving up (None: none).
        stream_content_types: responses of these media types are flushed at every chunk, so events
            reach the client at once instead of after the flush interval.
        rewrite_redirects: rewrite ``Location`` headers that point into the service.
    """

    def __init__(self, target: str, *, session: aiohttp.ClientSession | None = None,
                 connect_timeout: float = 10.0, read_timeout: float | None = None,
                 stream_content_types: tuple[str, ...] = ("text/event-stream",),
                 rewrite_redirects: bool = True) -> None:
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the proxy target must be an http:// or https:// URL, not {target!r}")
        self.target = target
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self.stream_content_types = stream_content_types
        self.rewrite_redirects = rewrite_redirects

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookie jar: cookies belong to the HTTP clients, not to the proxy.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        """Close the session this handler made."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> "ProxyHandler":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- the request ----------------------------------------------------------------------------
    def upstream_url(self, request: RelayedRequest) -> str:
        """Where *request* goes: the target's origin and base path, the request's path and query."""
        url = f"{self._origin}{self._base_path}{request.raw_path}"
        return f"{url}?{request.query}" if request.query else url

    def upstream_headers(self, request: RelayedRequest) -> list[tuple[str, str]]:
        """The request's headers for the service: no hop-by-hop ones, X-Forwarded-* added.

        X-Forwarded-For is appended to (as proxies chain it); the others are replaced.
        """
        source = request.headers
        drop = _drop_set(_DROP_REQUEST, source)
        headers = [(k, v) for k, v in source.items() if k.lower() not in drop]
        client = request.remote_endpoint[0] if request.remote_endpoint else None
        forwarded_for = source.get("X-Forwarded-For")
        if client:
            forwarded_for = f"{forwarded_for}, {client}" if forwarded_for else client
        if forwarded_for:
            headers.append(("X-Forwarded-For", forwarded_for))
        # Proto and Host describe the hop into the relay; a client's own values are not trusted.
        headers.append(("X-Forwarded-Proto", request.scheme))
        host = source.get("Host")
        if host:
            headers.append(("X-Forwarded-Host", host))
        if request.root_path:
            headers.append(("X-Forwarded-Prefix", request.root_path))
        return headers

    async def __call__(self, request: RelayedRequest, response: RelayedResponse) -> None:
        url = self.upstream_url(request)
        headers = self.upstream_headers(request)
        # An inline body is complete: send it with a Content-Length. A streamed one goes chunked.
        data: bytes | AsyncIterator[bytes] | None = None
        if request.has_body:
            data = await request.read() if request.body.buffered else aiter(request.body)
        skip = [name for name in _DEFAULT_HEADERS
                if name not in request.headers]  # add nothing the client did not send
        try:
            upstream = await self._get_session().request(
                request.method, url, headers=headers, data=data, allow_redirects=False,
                timeout=self._timeout, skip_auto_headers=skip, auto_decompress=False)
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            await self._bad_gateway(request, response, exc)
            return
        async with upstream:
            response.status = upstream.status
            response.reason = upstream.reason
            upstream_headers = upstream.headers
            drop = _drop_set(_DROP_RESPONSE_TO_HEAD if request.method == "HEAD" else _DROP_RESPONSE, upstream_headers)
            add = response.headers.add
            rewrite = self.rewrite_redirects
            for name, value in upstream_headers.items():
                lower = name.lower()
                if lower in drop:
                    continue
                if rewrite and lower == "location":
                    value = self._rewrite_location(value, request)
                add(name, value)
            content_type = upstream_headers.get("Content-Type")
            media = content_type.split(";")[0].strip().lower() if content_type else ""
            streaming = media in self.stream_content_types
            if streaming:
                await response.flush()
            elif upstream.content_length is not None and upstream.content_length <= WHOLE_BODY:
                # Small and framed: one read, one end() (inline on the control channel if it fits).
                # read() to EOF, not readexactly(): a HEAD or 304 answer has the length but no body;
                # aiohttp ends the payload at Content-Length and fails a short one, as iter_chunked does.
                await response.end(await upstream.content.read())
                return
            # A failure from here on cuts the response: the client sees a truncated body.
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
                if streaming:
                    await response.flush()
            await response.end()

    async def _bad_gateway(self, request: RelayedRequest, response: RelayedResponse, exc: BaseException) -> None:
        what = type(exc).__name__
        if isinstance(exc, TimeoutError):
            status, reason = 504, f"The local service at {self._origin} did not answer in time"
        else:
            status, reason = 502, f"The local service at {self._origin} is unreachable ({what})"
        _log.warning("event=proxy_upstream_failed request=%s target=%s status=%d error=%r",
                     request.id, self._origin, status, exc)
        response.status, response.reason = status, reason
        response.headers.clear()
        response.headers["Content-Type"] = "text/plain; charset=utf-8"
        await response.end(f"{reason}: {exc}\n".encode())

    def _rewrite_location(self, location: str, request: RelayedRequest) -> str:
        """A redirect into the service, made to go through the relay (like ProxyPassReverse)."""
        public_host = request.headers.get("Host")
        prefix = request.raw_root_path
        if location.startswith(self._origin):
            rest = location[len(self._origin):]
            if not rest.startswith(self._base_path):
                return location
            rest = rest[len(self._base_path):] or "/"
            return f"{request.scheme}://{public_host}{prefix}{rest}" if public_host else f"{prefix}{rest}"
        if location.startswith("/") and not location.startswith("//"):
            if self._base_path and location.startswith(self._base_path):
                location = location[len(self._base_path):] or "/"
            return f"{prefix}{location}"
        return location
