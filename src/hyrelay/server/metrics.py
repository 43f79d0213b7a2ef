"""``/$metrics``: the relay's counters in Prometheus exposition format.

The names follow Azure Relay's metrics (spec §7.2) in snake_case with a ``hyrelay_`` prefix, and
carry the labels ``namespace`` and ``hybrid_connection`` where Azure has the ``EntityName``
dimension. Everything except the request-latency histogram is read from the Observer and the
router when Prometheus scrapes, so the data path does no extra work for metrics.

The endpoint needs no token, as Prometheus scrapers expect. It exposes names and numbers only:
never a key, a token or a client address.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .observe import HcStats

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["METRICS_PATH", "LatencyCollector", "RelayCollector", "RelayMetrics", "setup"]

METRICS_PATH = "/$metrics"
_LABELS = ("namespace", "hybrid_connection")
_RESULTS = ("success", "client_error", "server_error")
# Methods are client-chosen tokens; an unbounded label would let any sender blow up the series count.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PUBLISH"})
# Prometheus' defaults, plus the relay's own deadlines (30 s accept, 60 s response; spec §7.1).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The buckets' ``le`` labels, spelled as prometheus_client spells them.
_LE = [*(floatToGoString(b) for b in _LATENCY_BUCKETS), "+Inf"]
_EMPTY = HcStats()


def open_bytes(relay: "Relay", hc_key: str) -> int:
    """Bytes relayed so far by connections of *hc_key* that are still open (both directions)."""
    total = 0
    for end in list(relay.counters.active.get(hc_key, ())):
        total += end.nbytes + (end.peer.nbytes if end.peer is not None else 0)
    return total


class RelayCollector(Collector):
    """Reads the relay's counters and live state each time the registry is collected."""

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        relay = self.relay
        ns = relay.namespace
        hcs = relay.snapshot.hcs(ns)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"hyrelay_{name}", doc, labels=_LABELS + extra)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"hyrelay_{name}", doc, labels=_LABELS)

        listener_conn = counter("listener_connections", "Listener connection attempts by result "
                                "(Azure ListenerConnections-*).", ("result",))
        sender_conn = counter("sender_connections", "Sender connection attempts by result "
                              "(Azure SenderConnections-*).", ("result",))
        listener_disc = counter("listener_disconnects", "Listener control channels that closed "
                                "(Azure ListenerDisconnects).")
        sender_disc = counter("sender_disconnects", "Relayed sender connections that closed "
                              "(Azure SenderDisconnects).")
        active_conn = gauge("active_connections", "Relayed connections open now (Azure ActiveConnections).")
        active_lst = gauge("active_listeners", "Listeners connected now (Azure ActiveListeners).")
        transferred = counter("bytes_transferred", "Payload bytes relayed, both directions, including "
                              "connections still open (Azure BytesTransferred).")
        http = counter("http_requests", "Relayed HTTP requests by status code.", ("code",))

        for hc in hcs:
            labels = [ns, hc.name]
            key = relay.hc_key(hc.name)
            # .get, not observer.hc(): a scrape must not create entries for idle HCs.
            stats = relay.observer.stats.get(hc.name, _EMPTY)
            for result in _RESULTS:
                listener_conn.add_metric(labels + [result], stats.listener_connections.get(result, 0))
                sender_conn.add_metric(labels + [result], stats.sender_connections.get(result, 0))
            listener_disc.add_metric(labels, stats.listener_disconnects)
            sender_disc.add_metric(labels, stats.sender_disconnects)
            active_conn.add_metric(labels, len(relay.counters.active.get(key, ())))
            active_lst.add_metric(labels, len(relay.router.listeners(key)))
            # Closed connections were added to the counter when they closed; open ones move over
            # from the sum below at that moment, so the total never goes down.
            transferred.add_metric(labels, stats.bytes_transferred + open_bytes(relay, key))
            for code, count in sorted(stats.http_requests.items()):
                http.add_metric(labels + [str(code)], count)

        yield from (listener_conn, sender_conn, listener_disc, sender_disc, active_conn, active_lst,
                    transferred, http)
        entities = GaugeMetricFamily("hyrelay_hybrid_connections", "Hybrid connections in the namespace.",
                                     labels=("namespace",))
        entities.add_metric([ns], len(hcs))
        yield entities
        pending = GaugeMetricFamily("hyrelay_pending_rendezvous", "Rendezvous addresses issued and not yet used.")
        pending.add_metric([], relay.router.pending_count)
        yield pending


class _Latency:
    """One latency series: observations per bucket (the last is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.total = 0.0


class LatencyCollector(Collector):
    """The request-latency histogram, kept by the relay as plain counts and exposed at scrape time.

    prometheus_client's Histogram takes a lock per value per observation; this costs a bisect and
    two additions per request, and drops deleted hybrid connections' series when scraped.
    """

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.series: dict[tuple[str, str], _Latency] = {}

    def observe(self, hc: str, method: str, status: int, seconds: float) -> None:
        label = method if method in _METHODS else "OTHER"  # methods are client-chosen: bounded labels
        series = self.series.get((hc, label))
        if series is None:
            series = self.series[(hc, label)] = _Latency()
        series.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def collect(self) -> Iterator[Metric]:
        ns = self.relay.namespace
        live = {hc.name for hc in self.relay.snapshot.hcs(ns)}
        for key in [key for key in self.series if key[0] not in live]:
            del self.series[key]
        family = HistogramMetricFamily("hyrelay_http_request_duration_seconds",
                                       "Time from a relayed HTTP request's arrival to the end of its response.",
                                       labels=_LABELS + ("method",))
        for (hc, label), series in sorted(self.series.items()):
            cumulative = list(accumulate(series.counts))
            family.add_metric([ns, hc, label], [*zip(_LE, cumulative)], series.total)
        yield family


class RelayMetrics:
    """A private registry per relay, so several relays in one process never share series."""

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RelayCollector(relay))
        self.latency = LatencyCollector(relay)
        self.registry.register(self.latency)
        relay.observer.on_http(self.latency.observe)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition text (or OpenMetrics if *accept* asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def setup(app: web.Application, relay: "Relay") -> RelayMetrics:
    """Serve ``GET /$metrics`` for *relay*."""
    metrics = RelayMetrics(relay)

    async def handler(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    app.router.add_get(METRICS_PATH, handler)
    return metrics
