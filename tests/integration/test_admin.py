"""The management API (``/$admin/``) and the runtime entity GET, against a real relay.

Limits are answered 400 (code QuotaExceeded), like every other input the caller must change; a
POST that would create a duplicate is 409, PUT creates or updates.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.exceptions import ConnectionClosed
from yarl import URL

from hyrelay.protocol.sas import build_token, parse_connection_string
from hyrelay.server import admin
from hyrelay.store import MAX_RULES, ROOT_RULE

from .wsutil import EchoListener, refused, ws_connect

NS = "hyrelay"
ATOM = "{http://www.w3.org/2005/Atom}"
CONNECT = "{http://schemas.microsoft.com/netservices/2010/10/servicebus/connect}"


class Admin:
    """Calls to the admin API of the test relay, signed with the root rule unless told otherwise."""

    def __init__(self, relay, session: aiohttp.ClientSession) -> None:
        self.relay = relay
        self.session = session

    def token(self, rule=None, *, key: str | None = None, audience: str = "/$admin", ttl: int = 600) -> str:
        rule = rule or self.relay.server.root_rule
        return build_token(f"{self.relay.http}{audience}", rule.name, key or rule.primary_key,
                           int(time.time()) + ttl)

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   token: str | None = "root", header: str = "Authorization") -> tuple[int, Any, Any]:
        """(status, decoded JSON or None, headers)."""
        headers = {}
        if token == "root":
            token = self.token()
        if token is not None:
            headers[header] = token
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(method, URL(f"{self.relay.http}{path}", encoded=True), data=data,
                                        headers=headers) as resp:
            text = await resp.read()
            payload = json.loads(text) if text else None
            return resp.status, payload, resp.headers

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, payload, _ = await self.call(method, path, body)
        assert got == status, payload
        return payload

    async def error(self, method: str, path: str, body: Any = None, *, status: int, code: str | None = None,
                    has: str = "", **kwargs) -> dict:
        got, payload, headers = await self.call(method, path, body, **kwargs)
        assert got == status, payload
        return check_error(payload, headers, code, has)


def check_error(payload: Any, headers: Any, code: str | None, has: str = "") -> dict:
    """Every error body is JSON with code, message and trackingId, and the header agrees."""
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"code", "message", "trackingId"}
    assert re.fullmatch(r"[0-9a-f-]{36}", error["trackingId"])
    assert f"TrackingId:{error['trackingId']}" in error["message"]
    assert headers["TrackingId"] == error["trackingId"]
    if code is not None:
        assert error["code"] == code, error
    assert has in error["message"], error["message"]
    return error


@pytest.fixture
async def api(relay) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(relay, session)


async def listen(relay, name: str, headers: dict[str, str] | None = None):
    return await ws_connect(f"{relay.ws}/$hc/{name}?sb-hc-action=listen",
                            relay.auth(name) if headers is None else headers)


def _sample(path: str) -> str:
    """A concrete path for a route pattern."""
    return (path.replace("{name:.+}", "guarded").replace("{rule}", ROOT_RULE).replace("{ns}", NS))


PROTECTED = [r for r in admin.ROUTES if r.auth]


# -- authorization ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", PROTECTED, ids=[f"{r.method} {r.path}" for r in PROTECTED])
async def test_every_operation_needs_a_manage_token(relay, api, route) -> None:
    relay.create_hc("guarded")
    path = _sample(route.path)
    await api.error(route.method, path, status=401, code="Unauthorized", token=None, has="no token")
    listen_rule = relay.create_rule("listen-only", ("Listen",))
    send_rule = relay.create_rule("send-only", ("Send",))
    for rule in (listen_rule, send_rule):
        await api.error(route.method, path, status=403, code="Forbidden", token=api.token(rule), has="Manage")


async def test_tokens_that_do_not_authorize(relay, api) -> None:
    relay.create_hc("guarded")
    # A rule of another namespace, even with the same name, does not sign for this one.
    relay.store.create_namespace("othernamespace")
    other_root = relay.store.get_rule("othernamespace", None, ROOT_RULE)
    await api.error("GET", "/$admin/hcs", status=401, token=api.token(other_root), has="invalid signature")
    # Manage on an entity is not Manage on the namespace.
    entity_manage = relay.create_rule("hc-manager", ("Manage",), entity="guarded")
    await api.error("GET", "/$admin/hcs", status=401, token=api.token(entity_manage))
    await api.error("GET", "/$admin/hcs", status=401, token="Bearer eyJhbGciOi", has="not a SharedAccessSignature")
    await api.error("GET", "/$admin/hcs", status=401, token=api.token(ttl=-3600), has="expired")
    await api.error("GET", "/$admin/hcs", status=401,
                    token=api.token(key="d3JvbmcgS2V5IHdyb25nIGtleSB3cm9uZyBrZXkgISE="))
    # The audience must cover the path.
    await api.error("GET", "/$admin/hcs", status=403, token=api.token(audience="/guarded"), has="audience")
    # Both headers work; an audience below /$admin scopes the token.
    status, _, _ = await api.call("GET", "/$admin/hcs", header="ServiceBusAuthorization")
    assert status == 200
    scoped = api.token(audience="/$admin/hcs/guarded")
    assert (await api.call("GET", "/$admin/hcs/guarded", token=scoped))[0] == 200
    await api.error("GET", "/$admin/rules", status=403, token=scoped)


# -- namespaces ---------------------------------------------------------------------------------


async def test_namespaces(relay, api) -> None:
    listed = await api.ok("GET", "/$admin/namespaces")
    assert [(n["name"], n["served"]) for n in listed["value"]] == [(NS, True)]
    assert set(listed["value"][0]) == {"name", "createdAt", "served"}

    status, made, headers = await api.call("POST", "/$admin/namespaces", {"name": "contoso-eu"})
    assert status == 201 and made["name"] == "contoso-eu" and made["served"] is False
    assert headers["Location"] == "/$admin/namespaces/contoso-eu"
    assert relay.store.get_rule("contoso-eu", None, ROOT_RULE).rights == ("Listen", "Send", "Manage")
    await api.error("POST", "/$admin/namespaces", {"name": "CONTOSO-EU"}, status=409, code="Conflict",
                    has="already exists")
    assert (await api.ok("GET", "/$admin/namespaces/Contoso-EU"))["name"] == "contoso-eu"

    # PUT creates or leaves alone.
    assert (await api.ok("PUT", "/$admin/namespaces/fabrikam-1", status=201))["name"] == "fabrikam-1"
    again = await api.ok("PUT", "/$admin/namespaces/fabrikam-1", {})
    assert again["name"] == "fabrikam-1"
    await api.ok("PUT", "/$admin/namespaces/fabrikam-1", {"name": "fabrikam-1", "served": False,
                                                          "createdAt": again["createdAt"]})
    await api.error("PUT", "/$admin/namespaces/fabrikam-1", {"sku": "Standard"}, status=400, has="'sku'")
    await api.error("PUT", "/$admin/namespaces/fabrikam-1", {"name": "other-one"}, status=400,
                    has="URL names")

    for bad in ("short", "x" * 51, "1starts-with-digit", "has_underscore", "ends-"):
        await api.error("PUT", f"/$admin/namespaces/{bad}", status=400, code="BadRequest",
                        has="invalid namespace name")
        await api.error("POST", "/$admin/namespaces", {"name": bad}, status=400, has="6-50 letters")
    await api.error("POST", "/$admin/namespaces", {}, status=400, has="needs the field 'name'")
    await api.error("POST", "/$admin/namespaces", {"name": 7}, status=400, has="'name' must be a string")

    assert (await api.call("DELETE", "/$admin/namespaces/contoso-eu"))[0] == 204
    await api.error("GET", "/$admin/namespaces/contoso-eu", status=404, code="NotFound", has="does not exist")
    await api.error("DELETE", "/$admin/namespaces/contoso-eu", status=404, code="NotFound")
    await api.error("DELETE", f"/$admin/namespaces/{NS.upper()}", status=409, code="Conflict",
                    has="this relay serves")
    assert [n["name"] for n in (await api.ok("GET", "/$admin/namespaces"))["value"]] == ["fabrikam-1", NS]


# -- hybrid connections -------------------------------------------------------------------------


HC_KEYS = {"name", "namespace", "requiresClientAuthorization", "userMetadata", "requestTimeout", "maxListeners",
           "multicast", "createdAt", "updatedAt", "listenerCount"}


async def test_hc_create_get_list_update_delete(relay, api) -> None:
    assert await api.ok("GET", "/$admin/hcs") == {"value": []}
    status, made, headers = await api.call("POST", "/$admin/hcs", {
        "name": "orders/EU", "userMetadata": "team=a", "requestTimeout": 30, "maxListeners": 3})
    assert status == 201 and set(made) == HC_KEYS
    assert headers["Location"] == "/$admin/hcs/orders%2FEU"
    assert made == {**made, "name": "orders/EU", "namespace": NS, "requiresClientAuthorization": True,
                    "userMetadata": "team=a", "requestTimeout": 30.0, "maxListeners": 3, "multicast": False,
                    "listenerCount": 0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", made["createdAt"])
    await api.error("POST", "/$admin/hcs", {"name": "ORDERS/eu"}, status=409, code="Conflict",
                    has="already exists")

    # Both the plain and the %2F form of a name with '/' work; lookups ignore case.
    assert await api.ok("GET", "/$admin/hcs/orders/eu") == made
    assert await api.ok("GET", "/$admin/hcs/ORDERS%2Feu") == made
    assert [h["name"] for h in (await api.ok("GET", "/$admin/hcs"))["value"]] == ["orders/EU"]

    # PATCH changes what it is given.
    patched = await api.ok("PATCH", "/$admin/hcs/orders/EU", {"multicast": True, "requestTimeout": None})
    assert (patched["multicast"], patched["requestTimeout"], patched["maxListeners"], patched["userMetadata"]) \
        == (True, None, 3, "team=a")
    assert relay.store.get_hc(NS, "orders/eu").request_timeout is None

    # PUT replaces: what it leaves out goes back to its default.
    put = await api.ok("PUT", "/$admin/hcs/orders/EU", {"requiresClientAuthorization": False})
    assert (put["requiresClientAuthorization"], put["multicast"], put["maxListeners"], put["userMetadata"]) \
        == (False, False, None, "")
    assert put["createdAt"] == made["createdAt"]
    # A GET, edit, PUT round trip: read-only fields may come back unchanged, in ARM's envelope too.
    put["userMetadata"] = "round trip"
    assert (await api.ok("PUT", "/$admin/hcs/orders/EU", put))["userMetadata"] == "round trip"
    wrapped = await api.ok("PUT", "/$admin/hcs/orders/EU", {"properties": {"userMetadata": "arm"}})
    assert wrapped["userMetadata"] == "arm" and wrapped["requiresClientAuthorization"] is True

    status, created, headers = await api.call("PUT", "/$admin/hcs/fresh", {"requestTimeout": 0})
    assert status == 201 and created["requestTimeout"] == 0 and headers["Location"] == "/$admin/hcs/fresh"

    assert (await api.call("DELETE", "/$admin/hcs/orders%2FEU"))[0] == 204
    for method in ("GET", "PATCH", "DELETE"):
        await api.error(method, "/$admin/hcs/orders/EU", {} if method == "PATCH" else None, status=404,
                        code="NotFound", has="hybrid connection 'orders/EU' does not exist")
    assert [h["name"] for h in (await api.ok("GET", "/$admin/hcs"))["value"]] == ["fresh"]


async def test_hc_names_with_a_rules_segment_need_the_encoded_form(relay, api) -> None:
    relay.create_hc("a")
    await api.ok("PUT", "/$admin/hcs/a%2Frules%2Fb", {}, status=201)
    assert (await api.ok("GET", "/$admin/hcs/a%2Frules%2Fb"))["name"] == "a/rules/b"
    # Unencoded, the same path is rule 'b' of hybrid connection 'a'.
    await api.error("GET", "/$admin/hcs/a/rules/b", status=404, has="rule 'b' does not exist")


@pytest.mark.parametrize(("name", "message"), [
    ("x" * 261, "1-260 characters"),
    ("$reserved", "must not start with '$'"),
    ("has space", "use letters, digits"),
    ("star*", "use letters, digits"),
    ("a/../b", "'..' are not allowed"),
])
async def test_invalid_hc_names(relay, api, name: str, message: str) -> None:
    path = f"/$admin/hcs/{name.replace(' ', '%20')}"
    await api.error("PUT", path, {}, status=400, code="BadRequest", has=message)
    await api.error("POST", "/$admin/hcs", {"name": name}, status=400, code="BadRequest", has=message)
    assert (await api.ok("GET", "/$admin/hcs"))["value"] == []


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"userMetadata": "x", "colour": "red", "size": 1}', 400, "Unknown fields 'colour', 'size'"),
    (b'{"requiresClientAuthorization": "yes"}', 400, "'requiresClientAuthorization' must be true or false"),
    (b'{"userMetadata": 5}', 400, "'userMetadata' must be a string"),
    (b'{"requestTimeout": "30"}', 400, "'requestTimeout' must be a number"),
    (b'{"requestTimeout": -1}', 400, "request timeout must be 0"),
    (b'{"requestTimeout": Infinity}', 400, "'requestTimeout' must be a number"),
    (b'{"maxListeners": 2.5}', 400, "'maxListeners' must be a whole number"),
    (b'{"maxListeners": 0}', 400, "max listeners must be between 1 and 10000"),
    (b'{"multicast": null}', 400, "'multicast' must be true or false"),
    (b'{"name": "other"}', 400, "URL names 'orders'"),
])
async def test_bad_hc_bodies(relay, api, body: bytes, status: int, message: str) -> None:
    relay.create_hc("orders", user_metadata="kept")
    for method in ("PUT", "PATCH"):
        await api.error(method, "/$admin/hcs/orders", raw=body, status=status, code="BadRequest", has=message)
    assert relay.store.get_hc(NS, "orders").user_metadata == "kept"


async def test_oversized_body_is_413(relay, api) -> None:
    relay.create_hc("orders")
    await api.error("PATCH", "/$admin/hcs/orders", raw=b'{"userMetadata": "' + b"x" * (2 << 20) + b'"}',
                    status=413, code="RequestEntityTooLarge")


async def test_writes_take_effect_at_once(relay, api) -> None:
    relay.create_hc("live")
    await api.ok("PATCH", "/$admin/hcs/live", {"maxListeners": 1})
    first = await listen(relay, "live")
    status, _ = await refused(f"{relay.ws}/$hc/live?sb-hc-action=listen", relay.auth("live"))
    assert status == 403
    # Anonymous senders, allowed the moment the PATCH answers (no waiting for the reload loop).
    listener = EchoListener(first)
    assert (await refused(f"{relay.ws}/$hc/live?sb-hc-action=connect"))[0] == 401
    await api.ok("PATCH", "/$admin/hcs/live", {"requiresClientAuthorization": False})
    async with ws_connect(f"{relay.ws}/$hc/live?sb-hc-action=connect") as sender:
        await sender.send("anonymous")
        assert await sender.recv() == "anonymous"
    await listener.close()


async def test_deleting_an_hc_closes_its_listeners_and_connections_with_1001(relay, api) -> None:
    relay.create_hc("doomed")
    listener = EchoListener(await listen(relay, "doomed"))
    sender = await ws_connect(f"{relay.ws}/$hc/doomed?sb-hc-action=connect", relay.auth("doomed"))
    await sender.send("before")
    assert await sender.recv() == "before"
    assert (await api.call("DELETE", "/$admin/hcs/doomed"))[0] == 204
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(sender.recv(), 10)
    await asyncio.wait_for(listener.control.wait_closed(), 10)  # its reader task is the EchoListener's
    for ws in (listener.control, sender):
        assert ws.close_code == 1001
        assert "deleted" in ws.close_reason
    assert relay.relay.counters.active.get(relay.relay.hc_key("doomed"), set()) == set()
    assert relay.relay.router.listeners(relay.relay.hc_key("doomed")) == []
    await listener.close()


# -- rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["namespace", "entity"])
async def test_rules(relay, api, scope: str) -> None:
    relay.create_hc("orders")
    base = "/$admin" if scope == "namespace" else "/$admin/hcs/orders"
    entity = None if scope == "namespace" else "orders"
    status, made, headers = await api.call("POST", f"{base}/rules", {"name": "app", "rights": ["send", "Listen"]})
    assert status == 201 and headers["Location"] == f"{base}/rules/app"
    assert made == {"name": "app", "namespace": NS, "rights": ["Listen", "Send"], "hybridConnection": entity,
                    "createdAt": made["createdAt"]}
    await api.error("POST", f"{base}/rules", {"name": "app", "rights": ["Send"]}, status=409, code="Conflict",
                    has="rule 'app' already exists")
    assert await api.ok("GET", f"{base}/rules/app") == made
    await api.error("GET", f"{base}/rules/APP", status=404, has="rule 'APP' does not exist")  # case-sensitive
    names = [r["name"] for r in (await api.ok("GET", f"{base}/rules"))["value"]]
    assert names == ([ROOT_RULE, "app"] if entity is None else ["app"])

    keys = await api.ok("POST", f"{base}/rules/app/listKeys")
    assert set(keys) == {"keyName", "primaryKey", "secondaryKey", "primaryConnectionString",
                         "secondaryConnectionString"}
    for which in ("primary", "secondary"):
        cs = parse_connection_string(keys[f"{which}ConnectionString"])
        assert cs.endpoint == f"http://127.0.0.1:{relay.port}/"
        assert (cs.key_name, cs.key, cs.entity_path) == ("app", keys[f"{which}Key"], entity)

    # PUT replaces the rights and keeps the keys; on a new name it creates.
    updated = await api.ok("PUT", f"{base}/rules/app", {"rights": ["Manage"], "name": "app"})
    assert updated["rights"] == ["Manage"] and updated["createdAt"] == made["createdAt"]
    assert await api.ok("POST", f"{base}/rules/app/listKeys") == keys
    status, created, _ = await api.call("PUT", f"{base}/rules/second", {"properties": {"rights": ["Listen"]}})
    assert status == 201 and created["rights"] == ["Listen"]

    # Regenerating replaces one key only.
    fresh = await api.ok("POST", f"{base}/rules/app/regenerateKeys", {"keyType": "PrimaryKey"})
    assert fresh["primaryKey"] != keys["primaryKey"] and fresh["secondaryKey"] == keys["secondaryKey"]
    assert parse_connection_string(fresh["primaryConnectionString"]).key == fresh["primaryKey"]
    chosen = await api.ok("POST", f"{base}/rules/app/regenerateKeys", {"keyType": "SecondaryKey", "key": "s3cret"})
    assert chosen["secondaryKey"] == "s3cret" and chosen["primaryKey"] == fresh["primaryKey"]
    assert relay.store.get_rule(NS, entity, "app").secondary_key == "s3cret"

    for body, message in [({"keyType": "TertiaryKey"}, "'keyType' must be"), ({}, "needs the field 'keyType'"),
                          ({"keyType": "PrimaryKey", "key": "has space"}, "invalid key"),
                          ({"keyType": "PrimaryKey", "kind": 1}, "Unknown field 'kind'")]:
        await api.error("POST", f"{base}/rules/app/regenerateKeys", body, status=400, code="BadRequest", has=message)
    for body, message in [({"name": "r", "rights": ["Fly"]}, "unknown right 'Fly'"),
                          ({"name": "r", "rights": []}, "rights must not be empty"),
                          ({"name": "r", "rights": "Listen"}, "'rights' must be a list"),
                          ({"name": "r"}, "needs the field 'rights'"),
                          ({"name": "bad name", "rights": ["Send"]}, "invalid rule name"),
                          ({"name": "x" * 257, "rights": ["Send"]}, "invalid rule name")]:
        await api.error("POST", f"{base}/rules", body, status=400, code="BadRequest", has=message)
    await api.error("PUT", f"{base}/rules/bad%20name", {"rights": ["Send"]}, status=400, has="invalid rule name")
    await api.error("PUT", f"{base}/rules/app", {"rights": ["Send"], "name": "other"}, status=400, has="URL names")

    for method, suffix in [("GET", ""), ("DELETE", ""), ("POST", "/listKeys")]:
        await api.error(method, f"{base}/rules/nope{suffix}", status=404, code="NotFound",
                        has="rule 'nope' does not exist")
    await api.error("POST", f"{base}/rules/nope/regenerateKeys", {"keyType": "PrimaryKey"}, status=404)
    assert (await api.call("DELETE", f"{base}/rules/app"))[0] == 204
    await api.error("DELETE", f"{base}/rules/app", status=404)


async def test_entity_rules_of_a_missing_hc_are_404(relay, api) -> None:
    await api.error("GET", "/$admin/hcs/ghost/rules", status=404, has="hybrid connection 'ghost' does not exist")
    await api.error("POST", "/$admin/hcs/ghost/rules", {"name": "r", "rights": ["Send"]}, status=404)
    await api.error("PUT", "/$admin/hcs/ghost/rules/r", {"rights": ["Send"]}, status=404)
    await api.error("GET", "/$admin/hcs/ghost/listeners", status=404)


@pytest.mark.parametrize("scope", ["namespace", "entity"])
async def test_thirteenth_rule_is_400_quota_exceeded(relay, api, scope: str) -> None:
    relay.create_hc("orders")
    base = "/$admin" if scope == "namespace" else "/$admin/hcs/orders"
    existing = 1 if scope == "namespace" else 0  # RootManageSharedAccessKey
    for i in range(MAX_RULES - existing):
        await api.ok("PUT", f"{base}/rules/r{i}", {"rights": ["Send"]}, status=201)
    await api.error("POST", f"{base}/rules", {"name": "one-too-many", "rights": ["Send"]}, status=400,
                    code="QuotaExceeded", has=f"already has {MAX_RULES} rules, the maximum; delete one first")
    await api.error("PUT", f"{base}/rules/one-too-many", {"rights": ["Send"]}, status=400, code="QuotaExceeded")
    await api.ok("PUT", f"{base}/rules/r0", {"rights": ["Listen"]})  # updating one is still fine


async def test_regenerating_a_key_rejects_new_connects_but_keeps_open_ones(relay, api) -> None:
    relay.create_hc("svc")
    await api.ok("POST", "/$admin/rules", {"name": "app", "rights": ["Listen", "Send"]}, status=201)
    old = relay.store.get_rule(NS, None, "app")
    listener = EchoListener(await listen(relay, "svc", relay.auth("svc", rule=old)))
    sender = await ws_connect(f"{relay.ws}/$hc/svc?sb-hc-action=connect", relay.auth("svc", rule=old))
    await sender.send("before")
    assert await sender.recv() == "before"

    keys = await api.ok("POST", "/$admin/rules/app/regenerateKeys", {"keyType": "PrimaryKey"})
    # The open connection and the listener's control channel keep running.
    await sender.send("after")
    assert await sender.recv() == "after"
    # New connects signed with the old key are refused at once; the new key and the untouched
    # secondary key work.
    for action in ("connect", "listen"):
        status, reason = await refused(f"{relay.ws}/$hc/svc?sb-hc-action={action}", relay.auth("svc", rule=old))
        assert status == 401 and "invalid signature" in reason
    for key in (keys["primaryKey"], old.secondary_key):
        async with ws_connect(f"{relay.ws}/$hc/svc?sb-hc-action=connect",
                              relay.auth("svc", rule=old, key=key)) as fresh:
            await fresh.send("new key")
            assert await fresh.recv() == "new key"
    await sender.send("still")
    assert await sender.recv() == "still"
    await sender.close()
    await listener.close()


async def test_listkeys_connection_string_serves_a_listener(relay, api) -> None:
    relay.create_hc("by-cs")
    await api.ok("PUT", "/$admin/hcs/by-cs/rules/listener", {"rights": ["Listen"]}, status=201)
    keys = await api.ok("POST", "/$admin/hcs/by-cs/rules/listener/listKeys")
    cs = parse_connection_string(keys["primaryConnectionString"])
    uri = f"{cs.ws_base}/$hc/{cs.entity_path}"
    token = build_token(uri, cs.key_name, cs.key, int(time.time()) + 600)
    control = await ws_connect(f"{uri}?sb-hc-action=listen", {"ServiceBusAuthorization": token})
    assert (await api.ok("GET", "/$admin/hcs/by-cs"))["listenerCount"] == 1
    # A Listen rule does not let senders in.
    assert (await refused(f"{uri}?sb-hc-action=connect", {"ServiceBusAuthorization": token}))[0] == 403
    await control.close()


# -- live state ---------------------------------------------------------------------------------


async def test_listeners_and_state(relay, api) -> None:
    relay.create_hc("watched")
    relay.create_hc("idle")
    control = await ws_connect(f"{relay.ws}/$hc/watched?sb-hc-action=listen&sb-hc-id=listener-one",
                               relay.auth("watched"))
    listener = EchoListener(control)
    value = (await api.ok("GET", "/$admin/hcs/watched/listeners"))["value"]
    assert len(value) == 1 and value[0]["id"] == "listener-one"
    local = control.local_address
    assert value[0]["remoteAddress"] == f"{local[0]}:{local[1]}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value[0]["connectedSince"])
    assert (await api.ok("GET", "/$admin/hcs/idle/listeners")) == {"value": []}

    sender = await ws_connect(f"{relay.ws}/$hc/watched?sb-hc-action=connect", relay.auth("watched"))
    await sender.send(b"12345")
    assert await sender.recv() == b"12345"
    state = await api.ok("GET", "/$admin/state")
    assert (state["namespace"], state["listeners"], state["activeConnections"]) == (NS, 1, 1)
    by_name = {h["name"]: h for h in state["hybridConnections"]}
    assert set(by_name) == {"watched", "idle"}
    watched = by_name["watched"]
    assert (watched["listeners"], watched["activeConnections"]) == (1, 1)
    assert watched["counters"]["listenerConnections"]["success"] == 1
    assert watched["counters"]["senderConnections"]["success"] == 1
    assert set(watched["counters"]) >= {"listenerConnections", "senderConnections", "listenerDisconnects",
                                        "senderDisconnects", "bytesTransferred", "httpRequests"}
    assert by_name["idle"]["counters"]["listenerConnections"] == {"success": 0, "clientError": 0, "serverError": 0}
    await sender.close()
    await listener.close()


# -- the runtime entity GET (spec §6.2) ---------------------------------------------------------


async def _runtime_get(relay, path: str, headers: dict[str, str] | None = None):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{relay.http}/{path}?api-version=2016-07",
                               headers={"X-PROCESS-AT": "ServiceBus", **(headers or {})}) as resp:
            return resp.status, resp.headers, await resp.text()


async def test_runtime_get_returns_the_atom_entry(relay) -> None:
    relay.create_hc("described", user_metadata="team <a> & b")
    control = await listen(relay, "described")
    listen_rule = relay.create_rule("l", ("Listen",), entity="described")
    send_rule = relay.create_rule("s", ("Send",))
    for rule in (listen_rule, send_rule, None):
        # The .NET SDK sends its token in Authorization.
        status, headers, body = await _runtime_get(
            relay, "described", {"Authorization": relay.token("described", rule=rule)})
        assert status == 200, body
        assert headers["Content-Type"] == "application/atom+xml;type=entry;charset=utf-8"
    entry = ET.fromstring(body)
    assert entry.tag == f"{ATOM}entry"
    description = entry.find(f"{ATOM}content")[0]
    assert description.tag == f"{CONNECT}HybridConnectionDescription"
    assert [child.tag.removeprefix(CONNECT) for child in description] == [
        "CreatedAt", "UpdatedAt", "RequiresClientAuthorization", "UserMetadata", "ListenerCount"]
    hc = relay.store.get_hc(NS, "described")
    assert description.find(f"{CONNECT}CreatedAt").text == hc.created_at
    assert description.find(f"{CONNECT}RequiresClientAuthorization").text == "true"
    assert description.find(f"{CONNECT}UserMetadata").text == "team <a> & b"
    assert description.find(f"{CONNECT}ListenerCount").text == "1"
    await control.close()


async def test_runtime_get_errors_and_unknown_paths(relay) -> None:
    relay.create_hc("described")
    relay.create_hc("other")
    status, headers, body = await _runtime_get(relay, "described")
    assert status == 401 and headers["Content-Type"].startswith("application/xml")
    error = ET.fromstring(body)
    assert error.tag == "Error" and error.find("Code").text == "401"
    assert f"TrackingId:{headers['TrackingId']}" in error.find("Detail").text
    # A token for another entity does not cover this one.
    status, _, body = await _runtime_get(relay, "described", {"Authorization": relay.token("other")})
    assert status == 403 and ET.fromstring(body).find("Code").text == "403"
    # An unknown path is an empty feed, which the SDKs read as EndpointNotFound.
    status, headers, body = await _runtime_get(relay, "nothing/here")
    assert status == 200 and headers["Content-Type"] == "application/atom+xml;type=feed;charset=utf-8"
    feed = ET.fromstring(body)
    assert feed.tag == f"{ATOM}feed" and feed.find(f"{ATOM}entry") is None
    # Below an entity, without api-version, or without the SDK's X-PROCESS-AT marker, it is an
    # ordinary relayed request (no listener here).
    async with aiohttp.ClientSession() as session:
        for url in (f"{relay.http}/described/sub?api-version=1", f"{relay.http}/described",
                    f"{relay.http}/described?api-version=2016-07"):
            async with session.get(url, headers=relay.auth("described")) as resp:
                assert resp.status == 502
                check_error(await resp.json(), resp.headers, "BadGateway")


# -- routing, errors, OpenAPI -------------------------------------------------------------------


async def test_unknown_admin_paths_and_methods(relay, api) -> None:
    await api.error("GET", "/$admin/nothing", status=404, code="NotFound", has="openapi.json")
    await api.error("GET", "/$admin", status=404, code="NotFound")
    got, payload, headers = await api.call("DELETE", "/$admin/state")
    assert got == 405 and headers["Allow"] == "GET"
    check_error(payload, headers, "MethodNotAllowed", "use GET")
    got, _, headers = await api.call("POST", "/$admin/hcs/x")
    assert got == 405 and headers["Allow"] == "DELETE, GET, PATCH, PUT"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_openapi_describes_every_admin_route(relay, api) -> None:
    status, document, _ = await api.call("GET", "/$admin/openapi.json", token=None)  # no token needed
    assert status == 200 and document["openapi"].startswith("3.1")
    assert document == json.loads(json.dumps(admin.openapi_document()))

    app = web.Application()
    admin.setup(app, relay.relay)
    registered = {(route.method.lower(), route.resource.canonical) for route in app.router.routes()}
    described = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert registered == described
    # The live relay routes them too.
    live = {(r.method.lower(), r.resource.canonical) for r in relay.server._runner.app.router.routes()
            if r.resource is not None}
    assert registered <= live

    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for ref in _refs(document):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    for path, ops in document["paths"].items():
        params = set(re.findall(r"\{(\w+)\}", path))
        for method, op in ops.items():
            assert {p["name"] for p in op.get("parameters", [])} == params, (method, path)
            assert any(code.startswith("2") for code in op["responses"])
            if path != "/$admin/openapi.json":
                assert "401" in op["responses"] and "security" not in op
