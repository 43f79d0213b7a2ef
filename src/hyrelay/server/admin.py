"""The management API under ``/$admin/``, and the runtime entity GET the SDKs use (spec §6).

Every ``/$admin/`` endpoint except the OpenAPI document needs a SAS token signed with a
namespace-level rule that has Manage, sent in ``ServiceBusAuthorization`` or ``Authorization``.
Bodies are JSON. Shapes follow ARM where that costs nothing: lists come under ``value``, rules
carry ``rights``, ``listKeys`` and ``regenerateKeys`` answer with ``AccessKeys``, and a request
body may wrap its fields in ARM's ``properties``. Read-only fields (``createdAt``...) may be sent
back unchanged, so a GET, edit, PUT round trip works.

Writes go to the store, then through :meth:`Relay.refresh` so they take effect at once: a deleted
hybrid connection loses its listeners and connections, and a regenerated key stops signing new
connections while open ones keep running (spec §5.4).

Hybrid connection names may contain ``/``. When a segment of a name is ``rules`` or ``listeners``
the path reads as a sub-resource; send the name's slashes as ``%2F`` then (the CLI always does).

Limits and bad names are 400 with code ``QuotaExceeded`` or ``BadRequest`` (the store's message
says what to change); a POST that would create a duplicate is 409, while PUT creates or updates.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape as _xml_escape

from aiohttp import web

from .. import __version__
from ..protocol.errors import BadRequest, InternalError, RelayError, RequestTooLarge
from ..protocol.sas import ConnectionString
from ..store import AlreadyExists, HybridConnection, LimitExceeded, Namespace, NotFound, Rule, StoreError
from . import http
from .dispatch import utc_timestamp
from .observe import HcStats

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["ADMIN_PREFIX", "ROUTES", "Route", "intercept", "openapi_document", "runtime_entity_get", "setup"]

_log = logging.getLogger("hyrelay.admin")

ADMIN_PREFIX = "/$admin"


# -- errors the store's vocabulary maps to ------------------------------------------------------


class ResourceNotFound(RelayError):
    status, close_code, code = 404, 1008, "NotFound"


class Conflict(RelayError):
    status, close_code, code = 409, 1008, "Conflict"


class LimitReached(BadRequest):
    """A quota of spec §7.1 (12 rules, 10,000 hybrid connections): 400, as any other bad input."""

    code = "QuotaExceeded"


class MethodNotAllowed(RelayError):
    status, close_code, code = 405, 1008, "MethodNotAllowed"


_LONG_QUOTED = re.compile(r"'([^']{80,})'")


def _from_store(exc: StoreError) -> RelayError:
    # Error messages end up in a reason phrase of at most 512 characters; a long name quoted in
    # full would push out the part that says what to change.
    message = _LONG_QUOTED.sub(lambda m: f"'{m[1][:40]}...' ({len(m[1])} characters)", str(exc))
    if isinstance(exc, NotFound):
        return ResourceNotFound(message)
    if isinstance(exc, AlreadyExists):
        return Conflict(message)
    if isinstance(exc, LimitExceeded):
        return LimitReached(message)
    return BadRequest(message)


# -- small helpers ------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(data: object, status: int = 200, location: str | None = None) -> web.Response:
    return web.json_response(data, status=status, headers={"Location": location} if location else None)


def _no_content() -> web.Response:
    return web.Response(status=204)


def _request_token(request: web.Request, *, query: bool = False) -> str | None:
    token = request.headers.get("ServiceBusAuthorization") or request.headers.get("Authorization")
    if not token and query:
        token = request.query.get("sb-hc-token")
    return token


def _raw_path(request: web.Request) -> str:
    return request.raw_path.partition("?")[0]


def _cs_endpoint(request: web.Request, relay: "Relay") -> str:
    """The ``Endpoint`` of connection strings: public-url if set, else the address the caller used."""
    if relay.config.public_url:
        parts = urlsplit(relay.config.public_url)
        secure, netloc = parts.scheme.lower() == "https", parts.netloc
    else:
        secure, netloc = request.secure, request.host
    # sb:// means TLS to clients; a plain relay keeps http:// so they know not to use TLS.
    return f"{'sb' if secure else 'http'}://{netloc}/"


def _camel(value: Any) -> Any:
    """snake_case keys to camelCase, all the way down (counters of HcStats)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key = str(key)
            head, *rest = key.split("_")
            out[head + "".join(p.capitalize() for p in rest)] = _camel(item)
        return out
    return value


# -- request bodies -----------------------------------------------------------------------------


async def _body(request: web.Request, writable: Iterable[str], read_only: Iterable[str] = (),
                required: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON object of the request (``{}`` if empty), checked for unknown and missing fields.

    Raises:
        BadRequest: not JSON, not an object, an unknown field, or a required field missing.
        RequestTooLarge: larger than aiohttp's client_max_size.
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(f"The request body is larger than {request.client_max_size} bytes, "
                              "the most the admin API reads") from None
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object")
    if set(data) == {"properties"} and isinstance(data["properties"], dict):
        data = data["properties"]  # ARM's envelope
    writable = tuple(writable)
    unknown = sorted(set(data) - set(writable) - set(read_only))
    if unknown:
        known = ", ".join(writable) or "none"
        raise BadRequest(f"Unknown field{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(u) for u in unknown)} in the request body; "
                         f"the fields you can set here are: {known}")
    missing = [name for name in required if name not in data]
    if missing:
        raise BadRequest(f"The request body needs the field{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(m) for m in missing)}")
    return data


def _check_name(data: Mapping[str, Any], name: str, what: str) -> None:
    """A read-only ``name`` sent back in a PUT must be the one in the URL."""
    given = data.get("name")
    if given is not None and (not isinstance(given, str) or given.lower() != name.lower()):
        raise BadRequest(f"The body names {what} {given!r} but the URL names {name!r}; "
                         "leave 'name' out or make them match")


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{field}' must be valid Unicode text (no lone surrogates)") from None
    return value


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"'{field}' must be true or false")
    return value


def _timeout(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{field}' must be a number of seconds (0: no limit) or null (the relay's default)")
    return float(value)


def _count(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{field}' must be a whole number or null (the relay's default)")
    return value


#: Body field -> (store keyword, check). The store validates ranges and names.
_HC_FIELDS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "requiresClientAuthorization": ("requires_client_authorization", _flag),
    "userMetadata": ("user_metadata", _text),
    "requestTimeout": ("request_timeout", _timeout),
    "maxListeners": ("max_listeners", _count),
    "multicast": ("multicast", _flag),
}
_HC_READ_ONLY = ("name", "namespace", "createdAt", "updatedAt", "listenerCount")
#: What PUT sets a field to when the body leaves it out: PUT replaces, PATCH merges.
_HC_DEFAULTS: dict[str, Any] = {"requires_client_authorization": True, "user_metadata": "",
                                "request_timeout": None, "max_listeners": None, "multicast": False}
_RULE_READ_ONLY = ("name", "namespace", "hybridConnection", "createdAt")
_NS_READ_ONLY = ("name", "createdAt", "served")


def _hc_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    return {kw: check(field, data[field]) for field, (kw, check) in _HC_FIELDS.items() if field in data}


def _rights(data: Mapping[str, Any]) -> list[str]:
    rights = data.get("rights")
    if not isinstance(rights, list) or not all(isinstance(r, str) for r in rights):
        raise BadRequest("'rights' must be a list of rights, such as [\"Listen\", \"Send\"]")
    return rights


# -- representations ----------------------------------------------------------------------------


def _listener_count(relay: "Relay", name: str) -> int:
    return len(relay.router.listeners(relay.hc_key(name)))


def _hc_out(relay: "Relay", hc: HybridConnection) -> dict[str, Any]:
    return {
        "name": hc.name, "namespace": hc.namespace,
        "requiresClientAuthorization": hc.requires_client_authorization, "userMetadata": hc.user_metadata,
        "requestTimeout": hc.request_timeout, "maxListeners": hc.max_listeners, "multicast": hc.multicast,
        "createdAt": hc.created_at, "updatedAt": hc.updated_at, "listenerCount": _listener_count(relay, hc.name),
    }


def _rule_out(rule: Rule) -> dict[str, Any]:
    # Keys only ever come from listKeys/regenerateKeys, as in ARM: a GET never shows them.
    return {"name": rule.name, "namespace": rule.namespace, "rights": list(rule.rights),
            "hybridConnection": rule.entity, "createdAt": rule.created_at}


def _keys_out(request: web.Request, relay: "Relay", rule: Rule) -> dict[str, str]:
    endpoint = _cs_endpoint(request, relay)

    def connection_string(key: str) -> str:
        return str(ConnectionString(endpoint, rule.name, key, rule.entity))

    return {"keyName": rule.name, "primaryKey": rule.primary_key, "secondaryKey": rule.secondary_key,
            "primaryConnectionString": connection_string(rule.primary_key),
            "secondaryConnectionString": connection_string(rule.secondary_key)}


def _ns_out(relay: "Relay", ns: Namespace) -> dict[str, Any]:
    return {"name": ns.name, "createdAt": ns.created_at, "served": ns.name.lower() == relay.namespace.lower()}


def _hc_location(name: str) -> str:
    return f"{ADMIN_PREFIX}/hcs/{quote(name, safe='')}"


def _rule_location(entity: str | None, name: str) -> str:
    base = ADMIN_PREFIX if entity is None else _hc_location(entity)
    return f"{base}/rules/{quote(name, safe='')}"


# -- handlers: namespaces -----------------------------------------------------------------------


async def list_namespaces(request: web.Request, relay: "Relay") -> web.Response:
    return _json({"value": [_ns_out(relay, ns) for ns in relay.store.list_namespaces()]})


async def create_namespace(request: web.Request, relay: "Relay") -> web.Response:
    data = await _body(request, ("name",), _NS_READ_ONLY[1:], required=("name",))
    ns = relay.store.create_namespace(_text("name", data["name"]))
    relay.refresh()
    return _json(_ns_out(relay, ns), 201, f"{ADMIN_PREFIX}/namespaces/{quote(ns.name, safe='')}")


async def get_namespace(request: web.Request, relay: "Relay") -> web.Response:
    return _json(_ns_out(relay, relay.store.get_namespace(request.match_info["ns"])))


async def put_namespace(request: web.Request, relay: "Relay") -> web.Response:
    name = request.match_info["ns"]
    data = await _body(request, (), _NS_READ_ONLY)
    _check_name(data, name, "namespace")
    try:
        ns, status = relay.store.create_namespace(name), 201
    except AlreadyExists:
        ns, status = relay.store.get_namespace(name), 200  # nothing to update: a namespace has no settings
    relay.refresh()
    return _json(_ns_out(relay, ns), status)


async def delete_namespace(request: web.Request, relay: "Relay") -> web.Response:
    name = request.match_info["ns"]
    ns = relay.store.get_namespace(name)
    if ns.name.lower() == relay.namespace.lower():
        raise Conflict(f"namespace {ns.name!r} is the one this relay serves; it cannot be deleted "
                       "while the relay runs (serve another namespace first)")
    relay.store.delete_namespace(ns.name)
    relay.refresh()
    return _no_content()


# -- handlers: hybrid connections ---------------------------------------------------------------


async def list_hcs(request: web.Request, relay: "Relay") -> web.Response:
    return _json({"value": [_hc_out(relay, hc) for hc in relay.store.list_hcs(relay.namespace)]})


async def create_hc(request: web.Request, relay: "Relay") -> web.Response:
    data = await _body(request, ("name", *_HC_FIELDS), _HC_READ_ONLY[1:], required=("name",))
    hc = relay.store.create_hc(relay.namespace, _text("name", data["name"]), **_hc_settings(data))
    relay.refresh()
    return _json(_hc_out(relay, hc), 201, _hc_location(hc.name))


async def get_hc(request: web.Request, relay: "Relay") -> web.Response:
    return _json(_hc_out(relay, relay.store.get_hc(relay.namespace, request.match_info["name"])))


async def put_hc(request: web.Request, relay: "Relay") -> web.Response:
    name = request.match_info["name"]
    data = await _body(request, _HC_FIELDS, _HC_READ_ONLY)
    _check_name(data, name, "hybrid connection")
    settings = {**_HC_DEFAULTS, **_hc_settings(data)}
    try:
        hc, status = relay.store.create_hc(relay.namespace, name, **settings), 201
    except AlreadyExists:
        hc, status = relay.store.update_hc(relay.namespace, name, **settings), 200
    relay.refresh()
    return _json(_hc_out(relay, hc), status, _hc_location(hc.name) if status == 201 else None)


async def patch_hc(request: web.Request, relay: "Relay") -> web.Response:
    name = request.match_info["name"]
    data = await _body(request, _HC_FIELDS, _HC_READ_ONLY)
    _check_name(data, name, "hybrid connection")
    hc = relay.store.update_hc(relay.namespace, name, **_hc_settings(data))
    relay.refresh()
    return _json(_hc_out(relay, hc))


async def delete_hc(request: web.Request, relay: "Relay") -> web.Response:
    relay.store.delete_hc(relay.namespace, request.match_info["name"])
    relay.refresh()  # closes the HC's listeners and connections with 1001
    return _no_content()


# -- handlers: rules (namespace level, or entity level under /hcs/{name}) -----------------------


def _entity(request: web.Request) -> str | None:
    return request.match_info.get("name")


async def list_rules(request: web.Request, relay: "Relay") -> web.Response:
    rules = relay.store.list_rules(relay.namespace, _entity(request))
    return _json({"value": [_rule_out(r) for r in rules]})


async def create_rule(request: web.Request, relay: "Relay") -> web.Response:
    data = await _body(request, ("name", "rights"), _RULE_READ_ONLY[1:], required=("name", "rights"))
    rule = relay.store.create_rule(relay.namespace, _entity(request), _text("name", data["name"]), _rights(data))
    relay.refresh()
    return _json(_rule_out(rule), 201, _rule_location(rule.entity, rule.name))


async def get_rule(request: web.Request, relay: "Relay") -> web.Response:
    return _json(_rule_out(relay.store.get_rule(relay.namespace, _entity(request), request.match_info["rule"])))


async def put_rule(request: web.Request, relay: "Relay") -> web.Response:
    name, entity = request.match_info["rule"], _entity(request)
    data = await _body(request, ("rights",), _RULE_READ_ONLY, required=("rights",))
    if data.get("name") is not None and data["name"] != name:  # rule names are case-sensitive
        raise BadRequest(f"The body names rule {data['name']!r} but the URL names {name!r}; "
                         "leave 'name' out or make them match")
    rights = _rights(data)
    try:
        rule, status = relay.store.create_rule(relay.namespace, entity, name, rights), 201
    except AlreadyExists:
        rule, status = relay.store.update_rule(relay.namespace, entity, name, rights), 200
    relay.refresh()
    return _json(_rule_out(rule), status, _rule_location(rule.entity, rule.name) if status == 201 else None)


async def delete_rule(request: web.Request, relay: "Relay") -> web.Response:
    relay.store.delete_rule(relay.namespace, _entity(request), request.match_info["rule"])
    relay.refresh()
    return _no_content()


async def list_keys(request: web.Request, relay: "Relay") -> web.Response:
    rule = relay.store.get_rule(relay.namespace, _entity(request), request.match_info["rule"])
    return _json(_keys_out(request, relay, rule))


_KEY_TYPES = {"primarykey": "primary", "secondarykey": "secondary"}


async def regenerate_keys(request: web.Request, relay: "Relay") -> web.Response:
    data = await _body(request, ("keyType", "key"), required=("keyType",))
    key_type = data["keyType"]
    which = _KEY_TYPES.get(key_type.lower()) if isinstance(key_type, str) else None
    if which is None:
        raise BadRequest("'keyType' must be \"PrimaryKey\" or \"SecondaryKey\"")
    key = data.get("key")
    if key is not None:
        key = _text("key", key)
    rule = relay.store.regenerate_key(relay.namespace, _entity(request), request.match_info["rule"],
                                      which, key)  # type: ignore[arg-type]
    relay.refresh()  # from here on, tokens signed with the old key get 401; open connections stay
    return _json(_keys_out(request, relay, rule))


# -- handlers: live state -----------------------------------------------------------------------


async def list_listeners(request: web.Request, relay: "Relay") -> web.Response:
    hc = relay.store.get_hc(relay.namespace, request.match_info["name"])
    value = []
    for channel in relay.router.listeners(relay.hc_key(hc.name)):
        host, port = channel.peer
        value.append({"id": channel.listener_id,
                      "remoteAddress": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                      "connectedSince": _iso(channel.since)})
    return _json({"value": value})


async def get_state(request: web.Request, relay: "Relay") -> web.Response:
    entries = []
    for hc in relay.store.list_hcs(relay.namespace):
        key = relay.hc_key(hc.name)
        stats = relay.observer.stats.get(hc.name) or HcStats()
        entries.append({"name": hc.name, "listeners": len(relay.router.listeners(key)),
                        "activeConnections": len(relay.counters.active.get(key, ())),
                        "counters": _camel(asdict(stats))})
    return _json({
        "namespace": relay.namespace,
        "listeners": sum(e["listeners"] for e in entries),
        "activeConnections": sum(e["activeConnections"] for e in entries),
        "pendingRendezvous": relay.router.pending_count,
        "hybridConnections": entries,
    })


async def get_openapi(request: web.Request, relay: "Relay") -> web.Response:
    return _json(openapi_document())


# -- the route table: aiohttp routes and the OpenAPI document both come from it -----------------

Handler = Callable[[web.Request, "Relay"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: what aiohttp routes, and what the OpenAPI document says about it."""

    method: str
    path: str  #: aiohttp pattern; ``{name:.+}`` lets hybrid connection names hold ``/``
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    status: int = 200
    response: str | None = None  #: schema of the success body; None: no body
    body: str | None = None  #: schema of the request body
    body_required: bool = True
    errors: tuple[int, ...] = (401, 403)
    auth: bool = True


_HC = f"{ADMIN_PREFIX}/hcs/{{name:.+}}"
_NS_RULE = f"{ADMIN_PREFIX}/rules/{{rule}}"
_HC_RULE = f"{_HC}/rules/{{rule}}"
_CRUD_ERRORS = (400, 401, 403, 404)

# Order matters: aiohttp tries routes in this order, and ``{name:.+}`` would swallow the
# sub-resources of a hybrid connection if the hybrid connection itself came first.
ROUTES: tuple[Route, ...] = (
    Route("GET", f"{ADMIN_PREFIX}/openapi.json", get_openapi, "getOpenApi", "This document", "meta",
          response="Document", errors=(), auth=False),
    Route("GET", f"{ADMIN_PREFIX}/state", get_state, "getState",
          "Live state: listeners, connections and counters per hybrid connection", "live state",
          response="State"),
    Route("GET", f"{ADMIN_PREFIX}/namespaces", list_namespaces, "listNamespaces",
          "List the namespaces in the store", "namespaces", response="NamespaceList"),
    Route("POST", f"{ADMIN_PREFIX}/namespaces", create_namespace, "createNamespace",
          "Create a namespace with a RootManageSharedAccessKey rule; 409 if it exists", "namespaces",
          201, "Namespace", "NamespaceCreate", errors=(400, 401, 403, 409)),
    Route("GET", f"{ADMIN_PREFIX}/namespaces/{{ns}}", get_namespace, "getNamespace", "Get a namespace",
          "namespaces", response="Namespace", errors=(401, 403, 404)),
    Route("PUT", f"{ADMIN_PREFIX}/namespaces/{{ns}}", put_namespace, "putNamespace",
          "Create a namespace (201), or confirm it exists (200)", "namespaces", response="Namespace",
          body="Namespace", body_required=False, errors=(400, 401, 403)),
    Route("DELETE", f"{ADMIN_PREFIX}/namespaces/{{ns}}", delete_namespace, "deleteNamespace",
          "Delete a namespace with its hybrid connections and rules; 409 for the one this relay serves",
          "namespaces", 204, errors=(401, 403, 404, 409)),
    Route("GET", f"{ADMIN_PREFIX}/rules", list_rules, "listNamespaceRules",
          "List the namespace's rules (without keys)", "rules", response="RuleList"),
    Route("POST", f"{ADMIN_PREFIX}/rules", create_rule, "createNamespaceRule",
          "Create a namespace rule with fresh keys; 409 if it exists", "rules", 201, "Rule", "RuleCreate",
          errors=(400, 401, 403, 409)),
    Route("POST", f"{_NS_RULE}/listKeys", list_keys, "listNamespaceRuleKeys",
          "The rule's keys and connection strings", "rules", response="AccessKeys", errors=(401, 403, 404)),
    Route("POST", f"{_NS_RULE}/regenerateKeys", regenerate_keys, "regenerateNamespaceRuleKey",
          "Replace one key; tokens signed with the old one stop working for new connections", "rules",
          response="AccessKeys", body="RegenerateKeys", errors=_CRUD_ERRORS),
    Route("GET", _NS_RULE, get_rule, "getNamespaceRule", "Get a namespace rule (without keys)", "rules",
          response="Rule", errors=(401, 403, 404)),
    Route("PUT", _NS_RULE, put_rule, "putNamespaceRule",
          "Create a namespace rule (201) or replace its rights (200); keys stay", "rules",
          response="Rule", body="Rule", errors=(400, 401, 403)),
    Route("DELETE", _NS_RULE, delete_rule, "deleteNamespaceRule", "Delete a namespace rule", "rules", 204,
          errors=(401, 403, 404)),
    Route("GET", f"{ADMIN_PREFIX}/hcs", list_hcs, "listHybridConnections",
          "List the served namespace's hybrid connections", "hybrid connections",
          response="HybridConnectionList"),
    Route("POST", f"{ADMIN_PREFIX}/hcs", create_hc, "createHybridConnection",
          "Create a hybrid connection; 409 if it exists", "hybrid connections", 201, "HybridConnection",
          "HybridConnectionCreate", errors=(400, 401, 403, 409)),
    Route("GET", f"{_HC}/listeners", list_listeners, "listListeners",
          "The listeners online for a hybrid connection", "live state", response="ListenerList",
          errors=(401, 403, 404)),
    Route("POST", f"{_HC_RULE}/listKeys", list_keys, "listHybridConnectionRuleKeys",
          "The rule's keys and connection strings (with EntityPath)", "rules", response="AccessKeys",
          errors=(401, 403, 404)),
    Route("POST", f"{_HC_RULE}/regenerateKeys", regenerate_keys, "regenerateHybridConnectionRuleKey",
          "Replace one key; tokens signed with the old one stop working for new connections", "rules",
          response="AccessKeys", body="RegenerateKeys", errors=_CRUD_ERRORS),
    Route("GET", _HC_RULE, get_rule, "getHybridConnectionRule", "Get an entity rule (without keys)", "rules",
          response="Rule", errors=(401, 403, 404)),
    Route("PUT", _HC_RULE, put_rule, "putHybridConnectionRule",
          "Create an entity rule (201) or replace its rights (200); keys stay", "rules", response="Rule",
          body="Rule", errors=_CRUD_ERRORS),
    Route("DELETE", _HC_RULE, delete_rule, "deleteHybridConnectionRule", "Delete an entity rule", "rules",
          204, errors=(401, 403, 404)),
    Route("GET", f"{_HC}/rules", list_rules, "listHybridConnectionRules",
          "List a hybrid connection's own rules (without keys)", "rules", response="RuleList",
          errors=(401, 403, 404)),
    Route("POST", f"{_HC}/rules", create_rule, "createHybridConnectionRule",
          "Create an entity rule with fresh keys; 409 if it exists", "rules", 201, "Rule", "RuleCreate",
          errors=(400, 401, 403, 404, 409)),
    Route("GET", _HC, get_hc, "getHybridConnection", "Get a hybrid connection", "hybrid connections",
          response="HybridConnection", errors=(401, 403, 404)),
    Route("PUT", _HC, put_hc, "putHybridConnection",
          "Create (201) or replace (200) a hybrid connection; fields left out get their defaults",
          "hybrid connections", response="HybridConnection", body="HybridConnection", body_required=False,
          errors=(400, 401, 403)),
    Route("PATCH", _HC, patch_hc, "patchHybridConnection",
          "Change the given fields of a hybrid connection", "hybrid connections",
          response="HybridConnection", body="HybridConnection", errors=_CRUD_ERRORS),
    Route("DELETE", _HC, delete_hc, "deleteHybridConnection",
          "Delete a hybrid connection; its listeners and connections are closed with 1001",
          "hybrid connections", 204, errors=(401, 403, 404)),
)


def setup(app: web.Application, relay: "Relay") -> None:
    """Register the ``/$admin/`` routes; call it before the catch-all route of the HTTP relay."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _endpoint_handler(route, relay))


def _tracker(relay: "Relay", request: web.Request) -> str:
    return f"{relay.namespace}:{request.path.lstrip('/')}"[:128]


def _endpoint_handler(route: Route, relay: "Relay") -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        tracker = _tracker(relay, request)
        try:
            if route.auth:
                # Segments of the decoded path, so a%2Fb and a/b are covered by the same audiences.
                target = tuple(segment.lower() for segment in request.path.split("/") if segment)
                relay.authorize_manage(_request_token(request), target)
            response = await route.handler(request, relay)
        except StoreError as exc:
            return _failed(request, _from_store(exc), tracker)
        except RelayError as err:
            return _failed(request, err, tracker)
        except Exception:
            err = InternalError("The relay failed to handle the admin request")
            _log.exception("event=admin_internal_error method=%s path=%s tracking_id=%s",
                           request.method, request.path, err.tracking_id)
            return _failed(request, err, tracker)
        if request.method != "GET":
            _log.info("event=admin_change method=%s path=%s status=%s", request.method, request.path,
                      response.status)
        return response

    return handle


def _failed(request: web.Request, err: RelayError, tracker: str) -> web.Response:
    _log.info("event=admin_failed method=%s path=%s status=%s tracking_id=%s reason=%r",
              request.method, request.path, err.status, err.tracking_id, err.message)
    return http.error_json(err, tracker)


_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]+))?\}")


def _allowed_methods(app: web.Application, path: str) -> list[str]:
    """Methods some ``/$admin`` route of *app* takes on *path*, whoever registered it."""
    allowed: set[str] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        pattern = info.get("pattern")
        template = info.get("path") or info.get("formatter") or ""
        if not template.startswith(ADMIN_PREFIX):
            continue
        if (pattern.fullmatch(path) if pattern is not None else template == path):
            allowed.update(route.method for route in resource if route.method != "*")
    return sorted(allowed)


def intercept(request: web.Request, relay: "Relay") -> web.Response | None:
    """For the HTTP relay's catch-all: answer what belongs to the relay itself, None for the rest.

    That is any ``/$admin`` path no route matched (404, or 405 with ``Allow``), and the runtime
    entity GET of spec §6.2.
    """
    path = request.path
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        tracker = _tracker(relay, request)
        allowed = _allowed_methods(request.app, path)
        if allowed:
            response = _failed(request, MethodNotAllowed(
                f"{request.method} is not supported on {path}; use {', '.join(allowed)}"), tracker)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return _failed(request, ResourceNotFound(
            f"There is no admin endpoint at {path}; the API is described at {ADMIN_PREFIX}/openapi.json"), tracker)
    return runtime_entity_get(request, relay)


# -- the runtime entity GET of the SDKs (spec §6.2) ---------------------------------------------

_ATOM = "http://www.w3.org/2005/Atom"
_CONNECT = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: str) -> str:
    """Text for XML: escaped, and without characters XML 1.0 cannot carry."""
    return _xml_escape(_XML_INVALID.sub("\ufffd", text), {'"': "&quot;"})


def runtime_entity_get(request: web.Request, relay: "Relay") -> web.Response | None:
    """``GET /{hc}?api-version=...``: the hybrid connection's description as an Atom entry.

    Returns None when the request is not one: another method, no ``api-version``, a ``$`` path,
    or a path below a hybrid connection (an ordinary relayed request). An unknown path answers
    200 with an empty Atom feed, which the SDKs read as EndpointNotFound. The token may hold any
    of Listen, Send or Manage for the entity; failures are Service Bus XML errors.
    """
    # The SDKs mark this call with X-PROCESS-AT: ServiceBus; without it, an app's own
    # GET /{hc}?api-version=... (common with ASP.NET APIs) is relayed to the listener as usual.
    if (request.method != "GET" or request.headers.get("X-PROCESS-AT", "").lower() != "servicebus"
            or not any(name.lower() == "api-version" for name in request.query)):
        return None
    decoded = "/".join(unquote(s) for s in _raw_path(request).split("/") if s)
    if decoded.startswith("$"):
        return None
    found = relay.snapshot.find_hc(relay.namespace, decoded)
    if found is None:
        return _atom_feed(request)
    hc, rest = found
    if rest.strip("/"):
        return None
    try:
        relay.authorize_read(_request_token(request, query=True), hc)
    except RelayError as err:
        _log.info("event=runtime_get_failed hc=%s status=%s tracking_id=%s reason=%r",
                  hc.name, err.status, err.tracking_id, err.message)
        return _xml_error(err, f"{relay.namespace}:{hc.name}")
    return _atom_entry(request, relay, hc)


def _atom_entry(request: web.Request, relay: "Relay", hc: HybridConnection) -> web.Response:
    url = _x(str(request.url))
    # DataContract order: CreatedAt, UpdatedAt, RequiresClientAuthorization, UserMetadata, ListenerCount.
    description = (
        f'<HybridConnectionDescription xmlns="{_CONNECT}" xmlns:i="{_XSI}">'
        f"<CreatedAt>{_x(hc.created_at)}</CreatedAt>"
        f"<UpdatedAt>{_x(hc.updated_at)}</UpdatedAt>"
        f"<RequiresClientAuthorization>{str(hc.requires_client_authorization).lower()}</RequiresClientAuthorization>"
        + (f"<UserMetadata>{_x(hc.user_metadata)}</UserMetadata>" if hc.user_metadata else "")
        + f"<ListenerCount>{_listener_count(relay, hc.name)}</ListenerCount>"
        "</HybridConnectionDescription>"
    )
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<entry xmlns="{_ATOM}">'
        f"<id>{url}</id>"
        f'<title type="text">{_x(hc.name)}</title>'
        f"<published>{_x(hc.created_at)}</published>"
        f"<updated>{_x(hc.updated_at)}</updated>"
        f"<author><name>{_x(relay.namespace)}</name></author>"
        f'<link rel="self" href="{url}"/>'
        f'<content type="application/xml">{description}</content>'
        "</entry>"
    )
    return web.Response(body=body.encode(), headers={"Content-Type": "application/atom+xml;type=entry;charset=utf-8"})


def _atom_feed(request: web.Request) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<feed xmlns="{_ATOM}">'
        '<title type="text">Publicly listed services</title>'
        f"<id>{_x(str(request.url))}</id>"
        f"<updated>{_iso(datetime.now(timezone.utc).timestamp())}</updated>"
        "<generator>hyrelay</generator>"
        "</feed>"
    )
    return web.Response(body=body.encode(), headers={"Content-Type": "application/atom+xml;type=feed;charset=utf-8"})


def _xml_error(err: RelayError, tracker: str) -> web.Response:
    detail = err.reason(tracker, utc_timestamp())
    body = f"<Error><Code>{err.status}</Code><Detail>{_x(detail)}</Detail></Error>"
    return web.Response(status=err.status, body=body.encode(),
                        headers={"Content-Type": "application/xml; charset=utf-8", "TrackingId": err.tracking_id})


# -- OpenAPI 3.1 --------------------------------------------------------------------------------

_NULLABLE_SECONDS = {"type": ["number", "null"], "minimum": 0,
                     "description": "Seconds a listener has to answer a relayed HTTP request; "
                                    "0: no limit; null: the relay's default (request-timeout)."}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "trackingId"],
            "properties": {
                "code": {"type": "string", "examples": ["BadRequest", "Unauthorized", "NotFound"]},
                "message": {"type": "string", "description": "What went wrong and what to change, "
                                                             "followed by the tracking id"},
                "trackingId": {"type": "string"},
            },
        }},
    },
    "Document": {"type": "object", "description": "An OpenAPI 3.1 document"},
    "Namespace": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "readOnly": True, "minLength": 6, "maxLength": 50,
                     "pattern": "^[A-Za-z][A-Za-z0-9-]{4,48}[A-Za-z0-9]$"},
            "createdAt": {"type": "string", "format": "date-time", "readOnly": True},
            "served": {"type": "boolean", "readOnly": True,
                       "description": "True for the namespace this relay serves"},
        },
    },
    "NamespaceCreate": {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {"name": {"$ref": "#/components/schemas/Namespace/properties/name"}},
    },
    "NamespaceList": {"type": "object", "properties": {
        "value": {"type": "array", "items": {"$ref": "#/components/schemas/Namespace"}}}},
    "HybridConnection": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 260,
                     "description": "Letters, digits, '.', '-', '_', with '/' between segments; "
                                    "not starting with '$'. Case-insensitive. Read-only except in POST."},
            "namespace": {"type": "string", "readOnly": True},
            "requiresClientAuthorization": {"type": "boolean", "default": True,
                                            "description": "False lets senders connect without a token"},
            "userMetadata": {"type": "string", "default": ""},
            "requestTimeout": _NULLABLE_SECONDS,
            "maxListeners": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000,
                             "description": "Listeners allowed at once; null: the relay's default "
                                            "(max-listeners)"},
            "multicast": {"type": "boolean", "default": False,
                          "description": "Deliver every request to all listeners instead of one"},
            "createdAt": {"type": "string", "format": "date-time", "readOnly": True},
            "updatedAt": {"type": "string", "format": "date-time", "readOnly": True},
            "listenerCount": {"type": "integer", "minimum": 0, "readOnly": True},
        },
    },
    "HybridConnectionCreate": {"$ref": "#/components/schemas/HybridConnection", "required": ["name"]},
    "HybridConnectionList": {"type": "object", "properties": {
        "value": {"type": "array", "items": {"$ref": "#/components/schemas/HybridConnection"}}}},
    "Rule": {
        "type": "object", "additionalProperties": False, "required": ["rights"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,256}$",
                     "description": "Case-sensitive. Read-only except in POST."},
            "rights": {"type": "array", "uniqueItems": True, "minItems": 1,
                       "items": {"enum": ["Listen", "Send", "Manage"]}},
            "namespace": {"type": "string", "readOnly": True},
            "hybridConnection": {"type": ["string", "null"], "readOnly": True,
                                 "description": "The entity of an entity-level rule; null on the namespace"},
            "createdAt": {"type": "string", "format": "date-time", "readOnly": True},
        },
    },
    "RuleCreate": {"$ref": "#/components/schemas/Rule", "required": ["name", "rights"]},
    "RuleList": {"type": "object", "properties": {
        "value": {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}}}},
    "AccessKeys": {
        "type": "object",
        "required": ["keyName", "primaryKey", "secondaryKey", "primaryConnectionString",
                     "secondaryConnectionString"],
        "properties": {name: {"type": "string"} for name in (
            "keyName", "primaryKey", "secondaryKey", "primaryConnectionString", "secondaryConnectionString")},
    },
    "RegenerateKeys": {
        "type": "object", "additionalProperties": False, "required": ["keyType"],
        "properties": {
            "keyType": {"enum": ["PrimaryKey", "SecondaryKey"]},
            "key": {"type": "string", "description": "The new key; left out: a fresh 256-bit key"},
        },
    },
    "Listener": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "remoteAddress": {"type": "string", "examples": ["203.0.113.7:50412"]},
            "connectedSince": {"type": "string", "format": "date-time"},
        },
    },
    "ListenerList": {"type": "object", "properties": {
        "value": {"type": "array", "items": {"$ref": "#/components/schemas/Listener"}}}},
    "Counters": {
        "type": "object",
        "description": "Counters since the relay started, named after Azure Relay's metrics",
        "properties": {
            "listenerConnections": {"$ref": "#/components/schemas/Outcomes"},
            "senderConnections": {"$ref": "#/components/schemas/Outcomes"},
            "listenerDisconnects": {"type": "integer"},
            "senderDisconnects": {"type": "integer"},
            "bytesTransferred": {"type": "integer"},
            "httpRequests": {"type": "object", "description": "Relayed HTTP requests by status code",
                             "additionalProperties": {"type": "integer"}},
        },
    },
    "Outcomes": {"type": "object", "properties": {
        "success": {"type": "integer"}, "clientError": {"type": "integer"}, "serverError": {"type": "integer"}}},
    "State": {
        "type": "object",
        "properties": {
            "namespace": {"type": "string"},
            "listeners": {"type": "integer"},
            "activeConnections": {"type": "integer"},
            "pendingRendezvous": {"type": "integer"},
            "hybridConnections": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "listeners": {"type": "integer"},
                    "activeConnections": {"type": "integer"},
                    "counters": {"$ref": "#/components/schemas/Counters"},
                },
            }},
        },
    },
}

_PARAMETERS: dict[str, dict[str, Any]] = {
    "ns": {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "Namespace name"},
    "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "Hybrid connection name. It may contain '/'; send it as %2F when a segment "
                            "is 'rules' or 'listeners'."},
    "rule": {"name": "rule", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "Rule (key) name"},
}

_ERRORS = {400: "Bad input: malformed JSON, an unknown field, an invalid name or value, or a limit reached",
           401: "No token, or a malformed, expired or wrongly signed one",
           403: "The token's rule lacks Manage, or its audience does not cover this path",
           404: "No such namespace, hybrid connection or rule",
           409: "It exists already, or it is the namespace this relay serves"}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of :data:`ROUTES`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary,
                                     "tags": [route.tag]}
        names = [m[1] for m in _PLACEHOLDER.finditer(route.path)]
        if names:
            operation["parameters"] = [_PARAMETERS[n] for n in names]
        if route.body:
            operation["requestBody"] = {"required": route.body_required, "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{route.body}"}}}}
        success: dict[str, Any] = {"description": "Created" if route.status == 201 else
                                   "No content" if route.status == 204 else "OK"}
        if route.response:
            success["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.response}"}}}
        responses = {str(route.status): success}
        if route.method == "PUT":  # create or update
            responses["201"] = {**success, "description": "Created"}
        responses.update({str(code): {"$ref": f"#/components/responses/E{code}"} for code in route.errors})
        operation["responses"] = responses
        if not route.auth:
            operation["security"] = []
        paths.setdefault(_PLACEHOLDER.sub(r"{\1}", route.path), {})[route.method.lower()] = operation
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hyrelay management API",
            "version": __version__,
            "description": (
                "Manage the namespaces, hybrid connections and SAS rules of a hyrelay relay, and read its "
                "live state. Every operation but this document needs a SharedAccessSignature token of a "
                "namespace-level rule with Manage, in the Authorization or ServiceBusAuthorization header. "
                "Errors are JSON {\"error\": {\"code\", \"message\", \"trackingId\"}}. Hybrid connections "
                "and rules are those of the namespace the relay serves. Besides this API the relay answers "
                "the SDKs' runtime GET /{hybridConnection}?api-version=... with an Atom entry (spec §6.2)."),
        },
        "security": [{"sas": []}],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"sas": {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "SharedAccessSignature sr=...&sig=...&se=...&skn=... (ServiceBusAuthorization "
                               "works too)"}},
            "responses": {f"E{code}": {"description": text, "content": error_body} for code, text in _ERRORS.items()},
        },
    }
