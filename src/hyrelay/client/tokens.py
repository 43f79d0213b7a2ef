"""Where listeners and senders get their SAS tokens (spec §5)."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from ..protocol.errors import Unauthorized
from ..protocol.sas import ConnectionString, build_token, parse_connection_string, parse_token

__all__ = ["TokenProvider", "SasKeyTokenProvider", "SasTokenProvider", "token_provider_from_connection_string",
           "DEFAULT_TOKEN_LIFETIME"]

#: What the SDKs ask for (spec §5.7); providers may issue shorter-lived tokens.
DEFAULT_TOKEN_LIFETIME = 3600.0


@runtime_checkable
class TokenProvider(Protocol):
    """Anything that can hand out a token for an audience."""

    async def get_token(self, audience_uri: str, lifetime: float) -> tuple[str, int]:
        """Return ``(token, expires_at)`` for *audience_uri*.

        Args:
            audience_uri: the hybrid connection, e.g. ``http://host:port/name``.
            lifetime: the longest validity the caller needs, in seconds; a provider may issue less.

        Returns:
            The token text as it goes into ``ServiceBusAuthorization``, and its expiry in Unix
            seconds (0 when unknown; such a token is never renewed).
        """
        ...


class SasKeyTokenProvider:
    """Signs a fresh token with a rule's key on every call."""

    def __init__(self, key_name: str, key: str, lifetime: float = DEFAULT_TOKEN_LIFETIME) -> None:
        if not key_name or not key:
            raise ValueError("SasKeyTokenProvider needs a key name and a key")
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.key_name = key_name
        self.key = key
        self.lifetime = float(lifetime)

    async def get_token(self, audience_uri: str, lifetime: float = DEFAULT_TOKEN_LIFETIME) -> tuple[str, int]:
        # The provider's own lifetime is a ceiling set by its owner; the caller's is what it needs.
        expires_at = int(time.time() + min(lifetime, self.lifetime))
        return build_token(audience_uri, self.key_name, self.key, expires_at), expires_at

    def __repr__(self) -> str:
        return f"SasKeyTokenProvider(key_name={self.key_name!r}, lifetime={self.lifetime:g})"


class SasTokenProvider:
    """Hands out one pre-issued token (``SharedAccessSignature=`` of a connection string) as it is."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("SasTokenProvider needs a token")
        self.token = token
        try:
            self.expires_at = parse_token(token).expires_at
        except Unauthorized:
            # Not a SAS token (an Entra ID JWT, say): pass it on, expiry unknown.
            self.expires_at = 0

    async def get_token(self, audience_uri: str, lifetime: float = DEFAULT_TOKEN_LIFETIME) -> tuple[str, int]:
        return self.token, self.expires_at

    def __repr__(self) -> str:
        return f"SasTokenProvider(expires_at={self.expires_at})"


def token_provider_from_connection_string(cs: str | ConnectionString) -> TokenProvider | None:
    """The provider a connection string describes; None when it carries no credentials (anonymous)."""
    if isinstance(cs, str):
        cs = parse_connection_string(cs)
    if cs.shared_access_signature:
        return SasTokenProvider(cs.shared_access_signature)
    if cs.key_name and cs.key:
        return SasKeyTokenProvider(cs.key_name, cs.key)
    return None
