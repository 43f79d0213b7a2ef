"""Pure tests for control-channel messages (spec §2.3, §2.7) and the error vocabulary."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyrelay.protocol.errors import (
    BadGateway,
    BadRequest,
    EndpointNotFound,
    Forbidden,
    GatewayTimeout,
    Gone,
    HeadersTooLarge,
    InternalError,
    ProtocolViolation,
    QuotaExceeded,
    RelayError,
    RequestTooLarge,
    Unauthorized,
    format_reason,
    new_tracking_id,
    safe_reason,
)
from hyrelay.protocol.headers import connect_headers
from hyrelay.protocol.messages import (
    MAX_CONTROL_MESSAGE,
    ListenerMessage,
    RenewToken,
    accept_message,
    parse_listener_message,
)

# -- accept -----------------------------------------------------------------------------------------

ADDRESS = "wss://relay.example:443/$hc/hyco/sfx?a=1&sb-hc-action=accept&sb-hc-id=abc"


def test_accept_message_exact_json():
    text = accept_message(ADDRESS, "abc", {"Host": "relay.example", "X-Custom": "v"}, "10.0.0.7", 51234)
    assert text == (
        '{"accept":{"address":"wss://relay.example:443/$hc/hyco/sfx?a=1&sb-hc-action=accept&sb-hc-id=abc",'
        '"id":"abc","connectHeaders":{"Host":"relay.example","X-Custom":"v"},'
        '"remoteEndpoint":{"address":"10.0.0.7","port":51234}}}'
    )


def test_accept_message_shape():
    doc = json.loads(accept_message(ADDRESS, "id-1", {}, "::1", 1))
    assert list(doc) == ["accept"]
    body = doc["accept"]
    assert list(body) == ["address", "id", "connectHeaders", "remoteEndpoint"]
    assert body["connectHeaders"] == {}
    assert body["remoteEndpoint"] == {"address": "::1", "port": 1}
    assert isinstance(body["remoteEndpoint"]["port"], int)


def test_accept_message_is_compact():
    text = accept_message(ADDRESS, "x", {"A": "b c"}, "1.2.3.4", 5)
    assert ": " not in text and ", " not in text.replace("b c", "")
    assert "\n" not in text


def test_accept_message_escapes_and_unicode():
    headers = {"X-Quote": 'say "hi"\\', "X-Uni": "\u00f8\u20ac"}
    text = accept_message(ADDRESS, "x", headers, "1.2.3.4", 5)
    assert json.loads(text)["accept"]["connectHeaders"] == headers


@given(st.text(), st.text(), st.dictionaries(st.text(), st.text(), max_size=5), st.text(),
       st.integers(0, 65535))
def test_property_accept_message_round_trips(address, conn_id, headers, remote, port):
    doc = json.loads(accept_message(address, conn_id, headers, remote, port))
    assert doc == {"accept": {"address": address, "id": conn_id, "connectHeaders": headers,
                              "remoteEndpoint": {"address": remote, "port": port}}}


def test_connect_headers_feed_accept():
    headers = connect_headers([("Host", "h"), ("ServiceBusAuthorization", "SharedAccessSignature x"),
                               ("X-A", "1"), ("x-a", "2"), ("SERVICEBUSAUTHORIZATION", "y")])
    assert headers == {"Host": "h", "X-A": "1, 2"}
    assert json.loads(accept_message(ADDRESS, "i", headers, "a", 1))["accept"]["connectHeaders"] == headers


# -- listener messages ----------------------------------------------------------------------------

def test_max_control_message():
    assert MAX_CONTROL_MESSAGE == 64 * 1024


def test_renew_token():
    token = "SharedAccessSignature sr=http%3A%2F%2Fns%2Fhyco&sig=abc%3D&se=1&skn=k"
    message = parse_listener_message(json.dumps({"renewToken": {"token": token}}))
    assert message == RenewToken(token)


def test_renew_token_with_extra_fields_and_whitespace():
    text = ' \n{ "renewToken" : { "other": 1, "token" : "eyJ.jwt.token" } }\n'
    assert parse_listener_message(text) == RenewToken("eyJ.jwt.token")


@pytest.mark.parametrize("doc", [
    {"response": {"requestId": "1", "statusCode": 200, "statusDescription": "OK"}},
    {"futureCommand": {"x": [1, 2]}},
    {"ping": None},
    {"renewtoken": {"token": "case matters"}},
    {"accept": "string body"},
])
def test_other_commands_are_listener_messages(doc):
    message = parse_listener_message(json.dumps(doc))
    name, body = next(iter(doc.items()))
    assert message == ListenerMessage(name, body)


def test_first_key_is_the_command():
    message = parse_listener_message('{"response":{"requestId":"1"},"renewToken":{"token":"t"}}')
    assert isinstance(message, ListenerMessage) and message.name == "response"


@pytest.mark.parametrize("text", [
    "", "   ", "not json", "{", "{'renewToken': {}}", '{"a":1', "\x00",
])
def test_not_json_is_protocol_violation(text):
    with pytest.raises(ProtocolViolation):
        parse_listener_message(text)


@pytest.mark.parametrize("text", ["[]", '[{"renewToken":{"token":"t"}}]', "1", '"renewToken"', "null",
                                  "true", "{}"])
def test_not_an_object_or_empty_object_is_protocol_violation(text):
    with pytest.raises(ProtocolViolation):
        parse_listener_message(text)


@pytest.mark.parametrize("body", [
    {}, {"token": None}, {"token": 42}, {"token": ["t"]}, {"token": {"t": 1}}, {"token": ""},
    {"Token": "t"}, None, "token-as-string", ["t"], 1,
])
def test_malformed_renew_token_is_protocol_violation(body):
    with pytest.raises(ProtocolViolation) as info:
        parse_listener_message(json.dumps({"renewToken": body}))
    assert info.value.close_code == 1008


@pytest.mark.parametrize("text", ["[" * 2000, '{"response":' + "[" * 5000 + "]" * 5000 + "}"])
def test_deeply_nested_json_is_protocol_violation(text):
    assert len(text.encode()) <= MAX_CONTROL_MESSAGE
    with pytest.raises(ProtocolViolation):
        parse_listener_message(text)


@given(st.text(max_size=300))
def test_property_parse_listener_message_only_raises_protocol_violation(text):
    try:
        message = parse_listener_message(text)
    except ProtocolViolation:
        return
    assert isinstance(message, (RenewToken, ListenerMessage))


# -- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, status, close_code, code", [
    (BadRequest, 400, 1008, "BadRequest"),
    (Unauthorized, 401, 1008, "Unauthorized"),
    (Forbidden, 403, 1008, "Forbidden"),
    (QuotaExceeded, 403, 1008, "QuotaExceeded"),
    (EndpointNotFound, 404, 1008, "EndpointNotFound"),
    (Gone, 410, 1000, "Gone"),
    (RequestTooLarge, 413, 1009, "RequestEntityTooLarge"),
    (HeadersTooLarge, 431, 1009, "RequestHeaderFieldsTooLarge"),
    (InternalError, 500, 1011, "InternalError"),
    (BadGateway, 502, 1011, "BadGateway"),
    (GatewayTimeout, 504, 1011, "GatewayTimeout"),
    (ProtocolViolation, 400, 1008, "ProtocolViolation"),
    (RelayError, 500, 1011, "InternalError"),
])
def test_error_classes(cls, status, close_code, code):
    err = cls("Something failed")
    assert isinstance(err, RelayError) and isinstance(err, Exception)
    assert (err.status, err.close_code, err.code) == (status, close_code, code)
    assert (cls.status, cls.close_code, cls.code) == (status, close_code, code)
    assert err.message == "Something failed"
    assert str(err) == "Something failed"


def test_quota_exceeded_is_forbidden():
    assert issubclass(QuotaExceeded, Forbidden)


def test_tracking_id_generated_or_given():
    a, b = RelayError("x"), RelayError("x")
    assert a.tracking_id != b.tracking_id
    assert str(uuid.UUID(a.tracking_id)) == a.tracking_id
    assert RelayError("x", tracking_id="given-id").tracking_id == "given-id"
    tid = new_tracking_id()
    assert str(uuid.UUID(tid)) == tid


def test_format_reason_shape():
    reason = format_reason("Endpoint does not exist.", "tid-1", "tracker-9", "2024-01-02T03:04:05Z")
    assert reason == ("Endpoint does not exist. TrackingId:tid-1, SystemTracker:tracker-9, "
                      "Timestamp:2024-01-02T03:04:05Z")


def test_format_reason_optional_parts():
    assert format_reason("Gone", "tid") == "Gone. TrackingId:tid"
    assert format_reason("Gone", "tid", "trk") == "Gone. TrackingId:tid, SystemTracker:trk"
    assert format_reason("Gone", "tid", timestamp="ts") == "Gone. TrackingId:tid, Timestamp:ts"


def test_error_reason_carries_tracking_id_and_tracker():
    err = EndpointNotFound("No listeners connected for endpoint 'hyco'", tracking_id="abc-123")
    reason = err.reason("ns:hyco", "2024")
    assert "TrackingId:abc-123" in reason
    assert "SystemTracker:ns:hyco" in reason
    assert "Timestamp:2024" in reason
    assert reason.startswith("No listeners connected for endpoint 'hyco'. ")


def test_format_reason_is_safe():
    reason = format_reason("bad\r\nInjected: header\u00f8\u20ac", "tid\r\n", "t\x00")
    assert "\r" not in reason and "\n" not in reason and "\x00" not in reason
    reason.encode("latin-1")
    assert "TrackingId:tid" in reason


@pytest.mark.parametrize("length", [500, 600, 4000])
def test_format_reason_keeps_tracking_id_for_long_messages(length):
    tid = str(uuid.uuid4())
    reason = format_reason("x" * length, tid, "tracker-1")
    assert f"TrackingId:{tid}" in reason
    assert "SystemTracker:tracker-1" in reason
    assert len(reason) <= 512


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("a\r\nb", "a  b"),
    ("  padded\n", "padded"),
    ("tab\there", "tab here"),
    ("x\u00e9y\u20acz\U0001f600!", "x y z !"),  # non-ASCII (even latin-1) becomes a space
    ("\x00\x7f\x1b[31m", "[31m"),
])
def test_safe_reason_examples(text, expected):
    assert safe_reason(text) == expected


def test_safe_reason_bounds_length():
    assert len(safe_reason("x" * 10_000)) == 512
    assert safe_reason("abcdef", 3) == "abc"
    assert safe_reason("", 10) == ""


@given(st.text(), st.integers(0, 1000))
def test_property_safe_reason(text, limit):
    result = safe_reason(text, limit)
    assert len(result) <= limit
    assert "\r" not in result and "\n" not in result
    assert all(32 <= ord(ch) < 127 for ch in result)
    result.encode("latin-1")


@given(st.text(), st.text(max_size=60), st.text(max_size=60))
def test_property_format_reason_is_one_latin1_line(message, tid, tracker):
    reason = format_reason(message, tid, tracker)
    assert "\r" not in reason and "\n" not in reason
    reason.encode("latin-1")
    assert len(reason) <= 512


# -- HTTP request and response messages: the typed fast path agrees with the tolerant one --------

from hyrelay.protocol.messages import (  # noqa: E402
    Endpoint,
    HttpRequest,
    MalformedResponse,
    ResponseHead,
    decode_request,
    decode_response,
    parse_relay_message,
    parse_request,
    parse_response,
    request_message,
    response_message,
)

_header_names = st.from_regex(r"[A-Za-z0-9\-]{1,12}", fullmatch=True)
_header_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"), max_size=20)


def _slow_request(text: str) -> HttpRequest:
    command = parse_relay_message(text)
    return parse_request(command.body)


def test_request_message_exact_json():
    full = HttpRequest("wss://r/$hc/h?sb-hc-action=request&sb-hc-id=1", "1", "/h/x?q=1", "GET",
                       Endpoint("10.0.0.7", 51234), {"Host": "r"}, False)
    assert request_message(full).decode() == (
        '{"request":{"address":"wss://r/$hc/h?sb-hc-action=request&sb-hc-id=1","id":"1","requestTarget":"/h/x?q=1",'
        '"method":"GET","remoteEndpoint":{"address":"10.0.0.7","port":51234},"requestHeaders":{"Host":"r"},'
        '"body":false}}')
    assert request_message(HttpRequest("wss://r/a", "2")) == b'{"request":{"address":"wss://r/a","id":"2"}}'


def test_full_request_always_carries_headers_and_body():
    doc = json.loads(request_message(HttpRequest("a", "1", "/t", "POST")))["request"]
    assert doc["requestHeaders"] == {} and doc["body"] is False and "remoteEndpoint" not in doc


@given(st.text(max_size=30), st.text(max_size=10), st.text(max_size=30), st.sampled_from(["GET", "POST", "HEAD"]),
       st.none() | st.tuples(st.text(max_size=15), st.integers(0, 65535)),
       st.dictionaries(_header_names, _header_values, max_size=5), st.booleans())
def test_property_request_fast_path_agrees(address, request_id, target, method, remote, headers, body):
    message = HttpRequest(address, request_id, target, method, Endpoint(*remote) if remote else None, headers, body)
    text = request_message(message).decode()
    fast = decode_request(text)
    assert fast is not None
    assert fast == _slow_request(text) == message


@pytest.mark.parametrize("text", [
    '{"request":{"address":"a","id":7,"method":"GET","requestHeaders":{"X":1}}}',  # id and value not strings
    '{"request":{"address":"a","id":"1","remoteEndpoint":"somewhere"}}',
    ' {"request":{"address":"a","id":"1"}}',  # not the compact form: left to json
    '{"accept":{"address":"a","id":"1"}}',
])
def test_request_fast_path_leaves_the_rest_to_the_tolerant_path(text):
    assert decode_request(text) is None


def test_tolerant_request_path_still_converts():
    request = _slow_request('{"request":{"address":"a","id":7,"method":"GET","requestHeaders":{"X":1},'
                            '"remoteEndpoint":{"address":"h","port":"x"}}}')
    assert (request.id, request.headers, request.remote_address, request.remote_port) == ("7", {"X": "1"}, "h", None)


def _slow_response(data: bytes) -> ResponseHead:
    message = parse_listener_message(data.decode())
    assert isinstance(message, ListenerMessage) and message.name == "response"
    return parse_response(message.body)


@given(st.text(min_size=1, max_size=20), st.integers(200, 999), st.none() | st.text(max_size=20),
       st.dictionaries(_header_names, _header_values, max_size=5), st.booleans())
def test_property_response_fast_path_agrees(request_id, status, description, headers, body):
    data = response_message(ResponseHead(request_id, status, description, headers, body)).encode()
    fast = decode_response(data)
    assert _slow_response(data) == ResponseHead(request_id, status, description, headers, body)
    if data.isascii():
        assert fast == _slow_response(data)
    else:  # left to the tolerant path, which checks the whole frame's UTF-8
        assert fast is None


def test_response_message_exact_json():
    assert response_message(ResponseHead("1", 200, None, None, None)) == (
        '{"response":{"requestId":"1","statusCode":200,"responseHeaders":{},"body":false}}')


@pytest.mark.parametrize("data", [
    b'{"response":{"requestId":"1","statusCode":"200"}}',  # PROTO's example: a string status
    b'{"response":{"requestId":"1","statusCode":200,"responseHeaders":{"X-N":5}}}',
    b'{"response":{"requestId":"1","statusCode":200,"responseHeaders":{"X":"\\ud800"}}}',  # a lone surrogate
    b'{"response":{"requestId":"","statusCode":200}}',
    b'{"response":{"statusCode":200}}',
    b'{"renewToken":{"token":"t"}}',
])
def test_response_fast_path_leaves_the_rest_to_the_tolerant_path(data):
    assert decode_response(data) is None


def test_string_status_is_still_accepted():
    head = _slow_response(b'{"response":{"requestId":"1","statusCode":"201","body":true}}')
    assert (head.status, head.body, head.headers) == (201, True, {})


@pytest.mark.parametrize("data, problem", [
    (b'{"response":{"requestId":"1","statusCode":101,"body":true}}', "cannot be relayed"),
    (b'{"response":{"requestId":"1","statusCode":200,"responseHeaders":{"Bad Name":"v"}}}', "not a valid HTTP header"),
    (b'{"response":{"requestId":"1","statusCode":200,"responseHeaders":{"X":"a\\r\\nInjected: 1"}}}',
     "not a valid HTTP header"),
])
def test_unusable_responses_are_malformed_on_both_paths(data, problem):
    for parse in (decode_response, _slow_response):
        with pytest.raises(MalformedResponse, match=problem) as caught:
            parse(data)
        assert caught.value.request_id == "1"
    assert caught.value.body is (b'"body":true' in data)


def test_invalid_utf8_is_left_to_the_tolerant_path():
    # which decodes the text first and so closes the channel with 1007 (tested in test_http_relay)
    assert decode_response(b'{"response":{"requestId":"\xff","statusCode":200}}') is None
