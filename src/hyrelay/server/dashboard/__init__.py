"""``/$dashboard``: a small web page to watch and manage the relay.

The page is static (HTML, CSS and vanilla JavaScript shipped in ``static/``, nothing from a CDN).
It holds no secret of the server's: the user signs in with a Manage key, the browser signs its
own SAS tokens with it, and every piece of data comes from the Manage-protected admin API and
event stream. Serving the page itself therefore needs no token.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..relay import Relay

__all__ = ["ASSETS", "DASHBOARD_PATH", "setup"]

DASHBOARD_PATH = "/$dashboard"
#: The only files served, so no request path ever reaches the file system.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "sas.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_HEADERS = {
    # Scripts, styles and fetches from this origin only: an injected string can never run.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    # The event stream's URL carries a token; never hand page URLs to anyone else.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in ASSETS}


def setup(app: web.Application, relay: "Relay") -> None:
    """Serve the dashboard page and its assets (read once, they are small)."""
    assets = _load()

    async def redirect(request: web.Request) -> web.StreamResponse:
        # The page uses relative asset URLs, which need the trailing slash.
        raise web.HTTPFound(f"{DASHBOARD_PATH}/")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        body = assets.get(name)
        if body is None:
            raise web.HTTPNotFound(text="Not found")
        return web.Response(body=body, headers={**_HEADERS, "Content-Type": ASSETS[name]})

    app.router.add_get(DASHBOARD_PATH, redirect)
    app.router.add_get(f"{DASHBOARD_PATH}/", asset)
    app.router.add_get(f"{DASHBOARD_PATH}/{{name}}", asset)
