"""Routes for watching the relay: ``/$metrics``, ``/$admin/events`` and ``/$dashboard``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from . import dashboard, events, metrics

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["setup"]


def setup(app: web.Application, relay: "Relay") -> None:
    """Add the metrics, event-stream and dashboard routes for *relay* to *app*."""
    metrics.setup(app, relay)
    events.setup(app, relay)
    dashboard.setup(app, relay)
