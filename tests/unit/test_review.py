"""Review findings in pure protocol code, once shown failing and now fixed: regression tests."""

from __future__ import annotations

import pytest

from hyrelay.protocol.errors import RelayError, Unauthorized
from hyrelay.protocol.rights import Rights
from hyrelay.protocol.sas import RuleKeys, VerifiedTokens, authorize, build_token

KEYS = RuleKeys("rule", "primary-key-text", "secondary-key-text", Rights.LISTEN | Rights.SEND)


def lookup(name: str):
    return KEYS if name == "rule" else None


def test_huge_expiry_is_a_relay_error_or_accepted():
    token = build_token("http://ns/hc", "rule", KEYS.primary_key, 10 ** 400)
    try:
        authorize(token, target=("hc",), lookup=lookup, needed=Rights.SEND, now=1_700_000_000.0)
    except RelayError:
        pass  # 401 "malformed" would be fine, so would acceptance


def test_huge_expiry_through_cache():
    token = build_token("http://ns/hc", "rule", KEYS.primary_key, 10 ** 400)
    cache = VerifiedTokens()
    with pytest.raises(Unauthorized):
        cache.authorize(token, scope="hc", target=("hc",), lookup=lookup, needed=Rights.SEND,
                        now=1_700_000_000.0)
