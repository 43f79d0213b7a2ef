"""Request ids and rendezvous secrets: unique, well-formed, across batch refills."""

from __future__ import annotations

import uuid

from hyrelay.server.httprelay import _Ids


def test_ids_are_uuid4_and_secrets_128_bit_hex_across_refills():
    ids = _Ids()
    pairs = [ids.take() for _ in range(3 * _Ids.BATCH + 7)]
    assert len({request_id for request_id, _ in pairs}) == len(pairs)
    assert len({secret for _, secret in pairs}) == len(pairs)
    for request_id, secret in pairs:
        parsed = uuid.UUID(request_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == request_id
        assert len(secret) == 32 and int(secret, 16) >= 0 and secret == secret.lower()
