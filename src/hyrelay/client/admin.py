"""A client for a running relay's management API (``/$admin/``), shaped like the store.

The CLI's remote mode uses it in place of :class:`hyrelay.store.SqliteStore`: the methods carry
the store's names and arguments, return the store's records and raise the store's errors, so a
command behaves the same on a local data dir and through a relay. The relay acts on the namespace
it serves, so the *namespace* arguments are accepted for that likeness and otherwise ignored.

It is synchronous (urllib): a command makes a few requests and has no event loop to share.

::

    admin = AdminClient("http://127.0.0.1:9000", "Endpoint=...;SharedAccessKeyName=...;SharedAccessKey=...")
    admin.create_hc(admin.namespace, "orders", request_timeout=30)
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

from ..protocol.errors import RelayError
from ..protocol.sas import build_token, parse_connection_string
from ..store import AlreadyExists, HybridConnection, InvalidName, LimitExceeded, Namespace, NotFound, Rule, StoreError

__all__ = ["AdminClient", "AdminError"]

ADMIN = "/$admin"
_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https", "sb": "https"}
#: Store keyword -> API field, for the hybrid connection settings.
_HC_FIELDS = {"requires_client_authorization": "requiresClientAuthorization", "user_metadata": "userMetadata",
              "request_timeout": "requestTimeout", "max_listeners": "maxListeners", "multicast": "multicast"}


class AdminError(StoreError):
    """The relay refused a request for a reason the store has no word for, or could not be reached.

    Every error this client raises has ``status`` (HTTP status, 0 if none) and ``tracking_id``.
    """


def _error(cls: type[StoreError], message: str, status: int, tracking_id: str | None) -> StoreError:
    err = cls(message)
    err.status = status  # type: ignore[attr-defined]
    err.tracking_id = tracking_id  # type: ignore[attr-defined]
    return err


class AdminClient:
    """The management API of the relay at *server*, authorised by a Manage connection string.

    Raises:
        ValueError: *server* is not an http(s) URL without a path, or the connection string has
            no key (nor a SharedAccessSignature).
    """

    def __init__(self, server: str, connection_string: str, *, timeout: float = 30.0,
                 token_ttl: int = 600) -> None:
        parts = urlsplit(server.strip())
        scheme = _SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.netloc:
            raise ValueError(f"invalid server URL {server!r}: give one such as http://127.0.0.1:9000")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"invalid server URL {server!r}: give the relay's root, without a path or query")
        self.base = f"{scheme}://{parts.netloc}"
        try:
            cs = parse_connection_string(connection_string)
        except RelayError as exc:  # BadRequest; its message never echoes the key
            raise ValueError(f"invalid connection string: {exc.message}") from None
        if not (cs.key_name and cs.key) and not cs.shared_access_signature:
            raise ValueError("invalid connection string: it needs SharedAccessKeyName and SharedAccessKey")
        self._cs = cs
        self.timeout = timeout
        self.token_ttl = token_ttl

    def _token(self) -> str:
        if self._cs.shared_access_signature:
            return self._cs.shared_access_signature
        # Audience /$admin: the token is good for the management API only, and only for a while.
        return build_token(f"{self.base}{ADMIN}", self._cs.key_name or "", self._cs.key or "",
                           int(time.time()) + self.token_ttl)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON answer, or None for an empty one."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers={
            "Authorization": self._token(), "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _error(AdminError, f"cannot reach the relay at {self.base}: {reason}", 0, None) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _error(AdminError, f"{self.base} answered {method} {path} with something other than "
                                     "JSON; is it a hyrelay relay?", 200, None) from None

    def _refused(self, exc: urllib.error.HTTPError) -> StoreError:
        tracking_id, code = None, ""
        try:
            error = json.loads(exc.read())["error"]
            message, tracking_id, code = str(error["message"]), error.get("trackingId"), error.get("code", "")
            message = message.split(". TrackingId:", 1)[0]  # the id goes at the end, once
        except Exception:
            message = f"the relay answered {exc.code} {exc.reason}"
        if exc.code in (401, 403):
            message = f"the relay refused the connection string: {message}"
        if tracking_id:
            message += f" (TrackingId:{tracking_id})"
        if exc.code == 404:
            cls: type[StoreError] = NotFound
        elif exc.code == 409:
            cls = AlreadyExists
        elif exc.code == 400:
            cls = LimitExceeded if code == "QuotaExceeded" else InvalidName
        else:
            cls = AdminError
        return _error(cls, message, exc.code, tracking_id)

    # -- namespaces -----------------------------------------------------------------------------

    @functools.cached_property
    def namespace(self) -> str:
        """The namespace the relay serves, which every hybrid connection and rule call acts on."""
        for ns in self._call("GET", f"{ADMIN}/namespaces")["value"]:
            if ns.get("served"):
                return ns["name"]
        raise _error(AdminError, f"the relay at {self.base} reports no namespace it serves", 200, None)

    def list_namespaces(self) -> list[Namespace]:
        return [_namespace(n) for n in self._call("GET", f"{ADMIN}/namespaces")["value"]]

    def get_namespace(self, name: str) -> Namespace:
        return _namespace(self._call("GET", f"{ADMIN}/namespaces/{_seg(name)}"))

    def create_namespace(self, name: str) -> Namespace:
        return _namespace(self._call("POST", f"{ADMIN}/namespaces", {"name": name}))

    def delete_namespace(self, name: str) -> None:
        self._call("DELETE", f"{ADMIN}/namespaces/{_seg(name)}")

    # -- hybrid connections ---------------------------------------------------------------------

    def list_hcs(self, namespace: str | None = None) -> list[HybridConnection]:
        return [_hc(h) for h in self._call("GET", f"{ADMIN}/hcs")["value"]]

    def get_hc(self, namespace: str | None, name: str) -> HybridConnection:
        return _hc(self._call("GET", _hc_path(name)))

    def create_hc(self, namespace: str | None, name: str, **settings: Any) -> HybridConnection:
        """Create *name*; *settings* are the store's keywords (requires_client_authorization...)."""
        return _hc(self._call("POST", f"{ADMIN}/hcs", {"name": name, **_hc_body(settings)}))

    def update_hc(self, namespace: str | None, name: str, **changes: Any) -> HybridConnection:
        """Change the given settings only; None resets request_timeout or max_listeners."""
        return _hc(self._call("PATCH", _hc_path(name), _hc_body(changes)))

    def delete_hc(self, namespace: str | None, name: str) -> None:
        self._call("DELETE", _hc_path(name))

    # -- rules ----------------------------------------------------------------------------------

    def list_rules(self, namespace: str | None, entity: str | None = None) -> list[Rule]:
        """The rules of the namespace or of *entity*, without their keys (as the API lists them)."""
        base = ADMIN if entity is None else _hc_path(entity)
        return [_rule(r) for r in self._call("GET", f"{base}/rules")["value"]]

    def get_rule(self, namespace: str | None, entity: str | None, name: str) -> Rule:
        """The rule with its keys (a GET plus a listKeys)."""
        path = _rule_path(entity, name)
        return _rule(self._call("GET", path), self._call("POST", f"{path}/listKeys"))

    def create_rule(self, namespace: str | None, entity: str | None, name: str, rights: Iterable[str]) -> Rule:
        base = ADMIN if entity is None else _hc_path(entity)
        made = self._call("POST", f"{base}/rules", {"name": name, "rights": _rights(rights)})
        return _rule(made, self._call("POST", f"{_rule_path(entity, name)}/listKeys"))

    def update_rule(self, namespace: str | None, entity: str | None, name: str, rights: Iterable[str]) -> Rule:
        path = _rule_path(entity, name)
        return _rule(self._call("PUT", path, {"rights": _rights(rights)}), self._call("POST", f"{path}/listKeys"))

    def delete_rule(self, namespace: str | None, entity: str | None, name: str) -> None:
        self._call("DELETE", _rule_path(entity, name))

    def regenerate_key(self, namespace: str | None, entity: str | None, name: str, which: str,
                       key: str | None = None) -> Rule:
        """Replace the primary or secondary key (*which*: ``primary``/``secondary`` or ARM's spelling)."""
        key_type = "SecondaryKey" if str(which).lower().removesuffix("key") == "secondary" else "PrimaryKey"
        path = _rule_path(entity, name)
        keys = self._call("POST", f"{path}/regenerateKeys",
                          {"keyType": key_type, **({"key": key} if key is not None else {})})
        return _rule(self._call("GET", path), keys)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""


# -- paths and records --------------------------------------------------------------------------


def _seg(name: str) -> str:
    # Slashes too: a hybrid connection named "a/rules/b" must not read as a rule of "a".
    return quote(name, safe="")


def _hc_path(name: str) -> str:
    return f"{ADMIN}/hcs/{_seg(name)}"


def _rule_path(entity: str | None, name: str) -> str:
    return f"{ADMIN if entity is None else _hc_path(entity)}/rules/{_seg(name)}"


def _rights(rights: Iterable[str]) -> list[str]:
    # The store takes "Listen,Send" too; the API wants a list.
    return [r.strip() for r in rights.split(",")] if isinstance(rights, str) else list(rights)


def _hc_body(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - set(_HC_FIELDS)
    if unknown:
        raise TypeError(f"unknown hybrid connection settings: {', '.join(sorted(unknown))}")
    return {_HC_FIELDS[kw]: value for kw, value in settings.items()}


def _namespace(data: dict[str, Any]) -> Namespace:
    return Namespace(data["name"], data["createdAt"])


def _hc(data: dict[str, Any]) -> HybridConnection:
    return HybridConnection(data["namespace"], data["name"], data["requiresClientAuthorization"],
                            data["userMetadata"], data["createdAt"], data["updatedAt"], data["requestTimeout"],
                            data["maxListeners"], data["multicast"])


def _rule(data: dict[str, Any], keys: dict[str, Any] | None = None) -> Rule:
    keys = keys or {}
    return Rule(data["namespace"], data["hybridConnection"], data["name"], keys.get("primaryKey", ""),
                keys.get("secondaryKey", ""), tuple(data["rights"]), data["createdAt"])
