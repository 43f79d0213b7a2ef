"""Review of the msgspec fast paths in protocol/messages.py (commits after 460c84e).

Every test here fails on the code as reviewed.
"""

from __future__ import annotations

import pytest

from hyrelay.client.http import _parse_full_request
from hyrelay.protocol.errors import ProtocolViolation
from hyrelay.protocol.messages import (MalformedResponse, decode_request, decode_response, parse_listener_message,
                                       parse_response)

_DEEP = "[" * 5000 + "]" * 5000  # 10 KB: fits a 64 KiB control message; json and msgspec both give up on it
_ADDRESS = "wss://ns/$hc/hc?sb-hc-action=request&sb-hc-id=1"


def test_decode_response_deep_nesting_falls_back_instead_of_raising_recursion_error():
    """msgspec raises RecursionError, which decode_response does not catch; the tolerant path
    (which json.loads' RecursionError becomes ProtocolViolation in) is never reached, so the
    relay's frame callback dies with an uncaught exception (picows closes with 1011)."""
    data = ('{"response":{"requestId":"a","statusCode":200,"x":%s}}' % _DEEP).encode()
    assert decode_response(data) is None
    with pytest.raises(ProtocolViolation):
        parse_listener_message(data.decode())


def test_decode_request_deep_nesting_falls_back_instead_of_raising_recursion_error():
    """Listener side: the RecursionError escapes _on_control, and _serve closes the whole control
    channel with 1011 and reconnects; the old path logged request_invalid and went on."""
    text = '{"request":{"address":"%s","id":"1","method":"GET","x":%s}}' % (_ADDRESS, _DEEP)
    assert decode_request(text) is None


def test_parse_full_request_deep_nesting_is_none():
    """The rendezvous reader expects None for a message it cannot use; it gets RecursionError."""
    text = '{"request":{"address":"%s","id":"1","method":"GET","x":%s}}' % (_ADDRESS, _DEEP)
    assert _parse_full_request(text) is None


def test_decode_response_does_not_accept_invalid_utf8_in_a_skipped_field():
    """msgspec checks UTF-8 only in strings it decodes, not in fields it skips: a text frame that
    is not UTF-8 is relayed, where the old path (data.decode()) closed the channel with 1007."""
    data = b'{"response":{"requestId":"a","statusCode":200,"note":"\xff"}}'
    with pytest.raises(UnicodeDecodeError):
        data.decode()
    assert decode_response(data) is None


def test_parse_response_infinite_status_is_malformed():
    """Pre-existing (also at 460c84e): int(inf) raises OverflowError, which parse_response does
    not catch, so statusCode 1e400 or Infinity escapes _on_text instead of a 502 for that request."""
    message = parse_listener_message('{"response":{"requestId":"a","statusCode":1e400,"body":false}}')
    with pytest.raises(MalformedResponse):
        parse_response(message.body)
