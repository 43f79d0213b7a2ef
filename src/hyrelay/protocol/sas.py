"""Shared Access Signature tokens and connection strings (spec §5, §6.3).

Pure code: the current time is always passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from .errors import BadRequest, Forbidden, Unauthorized
from .rights import Rights

__all__ = [
    "SasToken", "RuleKeys", "parse_token", "sign", "build_token", "token_audience",
    "audience_segments", "covers", "authorize", "VerifiedTokens", "ConnectionString",
    "parse_connection_string",
]

_PREFIX = "sharedaccesssignature "
MAX_TOKEN_LENGTH = 4096
#: Expiry times at or past 2**40 s (about 36,800 years) are nonsense, and would overflow floats.
MAX_EXPIRY = 2**40
_URI_COMPONENT_SAFE = "-_.!~*'()"


@dataclass(frozen=True, slots=True)
class SasToken:
    """A parsed token; ``sr`` and ``se`` are kept exactly as transmitted, for signing."""

    sr: str
    sig: str
    se: str
    skn: str
    expires_at: int

    @property
    def key_name(self) -> str:
        return unquote(self.skn)


@dataclass(frozen=True, slots=True)
class RuleKeys:
    """What verification needs to know about a rule: its two keys and its rights."""

    name: str
    primary_key: str
    secondary_key: str
    rights: Rights


def parse_token(text: str) -> SasToken:
    """Parse ``SharedAccessSignature sr=..&sig=..&se=..&skn=..`` (field order and case free).

    Raises:
        Unauthorized: the text is not a well-formed SAS token.
    """
    if len(text) > MAX_TOKEN_LENGTH:
        raise Unauthorized(f"The token is malformed: longer than {MAX_TOKEN_LENGTH} characters")
    text = text.strip()
    if not text.lower().startswith(_PREFIX):
        raise Unauthorized("The token is malformed: not a SharedAccessSignature token")
    fields: dict[str, str] = {}
    for piece in text[len(_PREFIX):].split("&"):
        name, sep, value = piece.partition("=")
        if sep:
            fields[name.strip().lower()] = value
    missing = [n for n in ("sr", "sig", "se", "skn") if not fields.get(n)]
    if missing:
        raise Unauthorized(f"The token is malformed: missing {', '.join(missing)}")
    try:
        expires_at = int(fields["se"])
    except ValueError:
        raise Unauthorized("The token is malformed: se is not an integer") from None
    if not 0 <= expires_at < MAX_EXPIRY:
        raise Unauthorized("The token is malformed: se is not a plausible Unix time")
    return SasToken(fields["sr"], fields["sig"], fields["se"], fields["skn"], expires_at)


def sign(sr: str, se: str, key: str) -> bytes:
    """HMAC-SHA256 over ``sr + "\\n" + se`` keyed with the key text's UTF-8 bytes (never decoded)."""
    return hmac.new(key.encode(), f"{sr}\n{se}".encode(), hashlib.sha256).digest()


def token_audience(resource_uri: str) -> str:
    """The audience the official clients sign: scheme http, no query, first ``$hc/`` removed, port kept."""
    parts = urlsplit(resource_uri)
    path = parts.path.replace("/$hc/", "/", 1).replace("/%24hc/", "/", 1)
    return f"http://{parts.netloc}{path or '/'}"


def build_token(resource_uri: str, key_name: str, key: str, expires_at: int) -> str:
    """Build a token for *resource_uri* that expires at *expires_at* (Unix seconds)."""
    sr = quote(token_audience(resource_uri), safe=_URI_COMPONENT_SAFE)
    se = str(int(expires_at))
    sig = base64.b64encode(sign(sr, se, key)).decode()
    return f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}&skn={key_name}"


def audience_segments(sr: str) -> tuple[str, ...]:
    """Normalised audience path (spec §5.3): scheme, host, port, query, ``$hc`` and slashes ignored."""
    decoded = unquote(sr)
    parts = urlsplit(decoded)
    path = parts.path if parts.scheme or parts.netloc else decoded.split("?", 1)[0]
    segments = [s for s in path.lower().split("/") if s]
    if segments and segments[0] == "$hc":
        segments = segments[1:]
    return tuple(segments)


def covers(audience: tuple[str, ...], target: tuple[str, ...]) -> bool:
    """True if *audience* is a prefix of *target* on segment boundaries."""
    return len(audience) <= len(target) and target[: len(audience)] == audience


def _signature_matches(token: SasToken, keys: RuleKeys) -> bool:
    try:
        given = base64.b64decode(unquote(token.sig), validate=True)
    except (binascii.Error, ValueError):
        return False
    ok = False
    for key in (keys.primary_key, keys.secondary_key):
        if key:
            # Check both keys every time so timing does not reveal which one matched.
            ok |= hmac.compare_digest(given, sign(token.sr, token.se, key))
    return ok


def authorize(
    token_text: str | None,
    *,
    target: tuple[str, ...],
    lookup: Callable[[str], RuleKeys | None],
    needed: Rights,
    now: float,
    skew: float = 300.0,
    entity: str = "",
) -> SasToken:
    """Verify a token for *target* (lowercased path segments) and the right *needed*.

    Returns the parsed token (its expiry matters for control channels).

    Raises:
        Unauthorized: no token, malformed, unknown key name, bad signature, expired (401).
        Forbidden: valid token that does not cover the target or lacks the right (403).
    """
    token, audience, keys = _verify(token_text, lookup, entity)
    return _check(token, audience, keys, target=target, needed=needed, now=now, skew=skew, entity=entity)


def _verify(token_text: str | None, lookup: Callable[[str], RuleKeys | None],
            entity: str) -> tuple[SasToken, tuple[str, ...], RuleKeys]:
    """Parse a token and check its signature: the costly, time-independent part."""
    if not token_text:
        raise Unauthorized(f"Unauthorized access to '{entity}': no token was provided "
                           "(ServiceBusAuthorization header or sb-hc-token query parameter)")
    token = parse_token(token_text)
    keys = lookup(token.key_name)
    if keys is None or not _signature_matches(token, keys):
        raise Unauthorized("The token has an invalid signature")
    return token, audience_segments(token.sr), keys


def _check(token: SasToken, audience: tuple[str, ...], keys: RuleKeys, *, target: tuple[str, ...],
           needed: Rights, now: float, skew: float, entity: str) -> SasToken:
    """Expiry, audience and rights of a token whose signature is good."""
    if now > token.expires_at + skew:
        raise Unauthorized(f"The token has expired (se={token.expires_at})")
    if not covers(audience, target):
        raise Forbidden(f"The token's audience '{unquote(token.sr)}' does not cover '{entity}'")
    if not keys.rights.grants(needed):
        raise Forbidden(f"The token's rule '{keys.name}' does not grant {needed.names()[0]} on '{entity}'")
    return token


class VerifiedTokens:
    """Tokens whose signature already checked out, per scope (the entity whose rules signed it).

    Clients reuse one token for its whole life (an hour, typically), so a reconnecting sender
    costs no HMAC. Clear it whenever rules or keys may have changed.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._cache: dict[tuple[str, str], tuple[SasToken, tuple[str, ...], RuleKeys]] = {}

    def clear(self) -> None:
        self._cache.clear()

    def authorize(self, token_text: str | None, *, scope: str, target: tuple[str, ...],
                  lookup: Callable[[str], RuleKeys | None], needed: Rights, now: float,
                  skew: float = 300.0, entity: str = "") -> SasToken:
        """:func:`authorize`, with the signature check remembered for *token_text* in *scope*."""
        key = (token_text or "", scope)
        verified = self._cache.get(key)
        if verified is None:
            verified = _verify(token_text, lookup, entity)
            if len(self._cache) >= self._limit:
                self._cache.clear()  # crude, but bounded: an attacker's tokens cannot pile up
            self._cache[key] = verified
        return _check(*verified, target=target, needed=needed, now=now, skew=skew, entity=entity)


@dataclass(frozen=True, slots=True)
class ConnectionString:
    """An Azure-form connection string: ``Endpoint=sb://host/;SharedAccessKeyName=..;SharedAccessKey=..``.

    ``Endpoint=sb://host:port/`` means TLS (wss, https); ``ws://`` or ``http://`` a plain local relay.
    """

    endpoint: str
    key_name: str | None = None
    key: str | None = None
    entity_path: str | None = None
    shared_access_signature: str | None = None

    def _base(self, secure: str, plain: str) -> str:
        parts = urlsplit(self.endpoint)
        scheme = parts.scheme.lower()
        if scheme in ("sb", "wss", "https"):
            return f"{secure}://{parts.netloc}"
        if scheme in ("ws", "http"):
            return f"{plain}://{parts.netloc}"
        raise BadRequest(f"Endpoint scheme '{scheme}' is not supported; use sb, ws, wss, http or https")

    @property
    def ws_base(self) -> str:
        """Base URL for WebSocket roles, e.g. ``ws://127.0.0.1:9000``."""
        return self._base("wss", "ws")

    @property
    def http_base(self) -> str:
        """Base URL for relayed HTTP, e.g. ``http://127.0.0.1:9000``."""
        return self._base("https", "http")

    def __str__(self) -> str:
        pieces = [f"Endpoint={self.endpoint}"]
        if self.entity_path:
            pieces.append(f"EntityPath={self.entity_path}")
        if self.key_name:
            pieces.append(f"SharedAccessKeyName={self.key_name}")
        if self.key:
            pieces.append(f"SharedAccessKey={self.key}")
        if self.shared_access_signature:
            pieces.append(f"SharedAccessSignature={self.shared_access_signature}")
        return ";".join(pieces)


_CS_FIELDS = {
    "endpoint": "endpoint", "sharedaccesskeyname": "key_name", "sharedaccesskey": "key",
    "entitypath": "entity_path", "sharedaccesssignature": "shared_access_signature",
}


def parse_connection_string(text: str) -> ConnectionString:
    """Parse a connection string; unknown keys (OperationTimeout, ...) are ignored.

    Raises:
        BadRequest: no Endpoint, or key name without key.
    """
    values: dict[str, str] = {}
    for piece in text.strip().split(";"):
        name, sep, value = piece.partition("=")
        field = _CS_FIELDS.get(name.strip().lower())
        if sep and field:
            values[field] = value.strip()
    if not values.get("endpoint"):
        raise BadRequest("The connection string has no Endpoint")
    if bool(values.get("key_name")) != bool(values.get("key")):
        raise BadRequest("The connection string needs both SharedAccessKeyName and SharedAccessKey")
    return ConnectionString(**values)
