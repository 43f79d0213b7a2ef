"""Pure tests for the headers a relayed request carries to its listener (spec §4.2, §4.11)."""

from __future__ import annotations

from hyrelay.protocol.headers import connect_headers, request_headers


def test_auth_and_hop_by_hop_headers_stay_behind():
    headers = [("Host", "h"), ("ServiceBusAuthorization", "SharedAccessSignature x"), ("Keep-Alive", "5"),
               ("Transfer-Encoding", "chunked"), ("Content-Length", "3"), ("Authorization", "Bearer t"),
               ("X-App", "1")]
    assert request_headers(headers, strip_authorization=False) == {"Host": "h", "Authorization": "Bearer t",
                                                                   "X-App": "1"}
    assert request_headers(headers, strip_authorization=True) == {"Host": "h", "X-App": "1"}


def test_repeats_are_joined_under_the_first_casing():
    headers = [("X-A", "1"), ("x-a", "2"), ("X-B", "3"), ("X-A", "4")]
    assert request_headers(headers, strip_authorization=False) == {"X-A": "1, 2, 4", "X-B": "3"}


def test_headers_named_in_connection_are_hop_by_hop():
    headers = [("X-Trace", "a"), ("Connection", "keep-alive, X-TRACE"), ("x-trace", "b"), ("X-Keep", "k"),
               ("connection", " x-other ,"), ("X-Other", "o")]
    assert request_headers(headers, strip_authorization=False) == {"X-Keep": "k"}


def test_connect_headers_keep_what_connection_names():
    headers = [("Connection", "Upgrade, X-Trace"), ("X-Trace", "a"), ("ServiceBusAuthorization", "s")]
    assert connect_headers(headers) == {"Connection": "Upgrade, X-Trace", "X-Trace": "a"}
