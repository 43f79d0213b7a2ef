"""``$hc`` addresses: parse request targets, filter ``sb-hc-*`` queries, build rendezvous URLs (spec §1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = ["RENDEZVOUS_PARAM", "HcTarget", "parse_hc_target", "filter_query", "query_params", "build_address",
           "reject_address", "ACTIONS", "path_segments"]

ACTIONS = ("listen", "accept", "connect", "request")
#: hyrelay's own parameter carrying a rendezvous address's secret (``sb-hc-rendezvous``).
RENDEZVOUS_PARAM = "rendezvous"
_PREFIXES = ("/$hc/", "/%24hc/")


def path_segments(path: str) -> tuple[str, ...]:
    """Lowercased, decoded, non-empty segments of a path; what token audiences are matched against."""
    return tuple(unquote(s).lower() for s in path.split("/") if s)


def query_params(raw_query: str) -> dict[str, str]:
    """Decoded query parameters, names lowercased; the first occurrence of a name wins."""
    params: dict[str, str] = {}
    for piece in raw_query.split("&"):
        name, sep, value = piece.partition("=")
        if sep:
            params.setdefault(unquote(name).lower(), unquote(value.replace("+", "%20")))
    return params


def filter_query(raw_query: str) -> str:
    """Drop every ``name=value`` piece whose decoded name starts with ``sb-hc-``; keep the rest verbatim."""
    kept = []
    for piece in raw_query.split("&"):
        name, sep, _ = piece.partition("=")
        if sep and unquote(name).lower().startswith("sb-hc-"):
            continue
        kept.append(piece)
    return "&".join(kept)


@dataclass(frozen=True, slots=True)
class HcTarget:
    """A request target under ``/$hc/``: the raw path after the prefix and its query."""

    raw_path: str
    query: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def action(self) -> str:
        """``sb-hc-action``; a missing one means connect (spec §1.3)."""
        return self.params.get("sb-hc-action", "connect").lower()

    @property
    def decoded_path(self) -> str:
        return "/".join(unquote(s) for s in self.raw_path.split("/") if s)

    def raw_suffix(self, name_segments: int) -> str:
        """The raw path after the first *name_segments* segments, with its leading ``/``."""
        rest = [s for s in self.raw_path.split("/") if s][name_segments:]
        return "/" + "/".join(rest) if rest else ""


def parse_hc_target(target: str) -> HcTarget | None:
    """Parse ``/$hc/{path}[/suffix][?query]``; None if *target* is not under ``/$hc/``."""
    path, _, query = target.partition("?")
    lowered = path[:7].lower()
    for prefix in _PREFIXES:
        if lowered.startswith(prefix):
            return HcTarget(path[len(prefix):], query, query_params(query))
    return None


def build_address(base: str, raw_path: str, app_query: str, **params: str) -> str:
    """A ``$hc`` URL: *base* (``ws://host:port``), raw path, the app query, then ``sb-hc-*`` params."""
    # The app query goes through verbatim (empty pieces too), our own parameters after it.
    pieces = [app_query] if app_query else []
    pieces += [f"sb-hc-{name.replace('_', '-')}={quote(value, safe='')}" for name, value in params.items()]
    return f"{base.rstrip('/')}/$hc/{raw_path.lstrip('/')}?{'&'.join(pieces)}"


def reject_address(address: str, status: int, description: str) -> str:
    """An ``accept`` *address* with a listener's reject appended (spec §2.5.2); the relay answers 410."""
    sep = "&" if "?" in address else "?"
    return (f"{address}{sep}sb-hc-statusCode={int(status)}"
            f"&sb-hc-statusDescription={quote(description, safe='')}")
