"""Pure tests for hyrelay.protocol.addresses: ``$hc`` targets and ``sb-hc-*`` filtering (spec §1)."""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyrelay.protocol.addresses import (
    ACTIONS,
    HcTarget,
    build_address,
    filter_query,
    parse_hc_target,
    path_segments,
    query_params,
)
from hyrelay.protocol.rights import Rights
from hyrelay.protocol.sas import RuleKeys, authorize, build_token

# -- filter_query: every row of the §1.7 table ---------------------------------------------------

SPEC_TABLE = [
    ("?sb-hc-id=1&custom=value", "?custom=value"),
    ("?sb-hc-undefined", "?sb-hc-undefined"),
    ("?sb-hc-whatever=&foo=bar", "?foo=bar"),
    ("?a=1&a=2&", "?a=1&a=2&"),
    ("?&&&", "?&&&"),
    ("?%2f%3a%3d%26", "?%2f%3a%3d%26"),
]


@pytest.mark.parametrize("sent, seen", SPEC_TABLE)
def test_filter_query_spec_table(sent, seen):
    assert filter_query(sent[1:]) == seen[1:]


@pytest.mark.parametrize("raw, expected", [
    ("", ""),
    ("sb-hc-action=connect", ""),
    ("sb-hc-action=connect&sb-hc-id=1&sb-hc-token=abc", ""),
    ("x=1&sb-hc-action=connect&y=2", "x=1&y=2"),
    # case-insensitive prefix
    ("SB-HC-ID=1&Sb-Hc-Token=t&keep=1", "keep=1"),
    # the *decoded* name is checked
    ("sb%2Dhc%2Did=1&%73b-hc-token=x&%53B-HC-x=y&keep=%73b-hc-", "keep=%73b-hc-"),
    # statusCode etc. carry the prefix too; unprefixed ones (Node's reject variant) stay
    ("sb-hc-statusCode=404&sb-hc-statusDescription=Nope&statusCode=401", "statusCode=401"),
    # verbatim: raw encoding, '+', odd pieces, duplicates
    ("q=a+b%20c&q=%E2%82%AC&=&x&sb-hc-=1", "q=a+b%20c&q=%E2%82%AC&=&x"),
    # not a prefix match on the value, or on a name that merely contains it
    ("my-sb-hc-id=1&x=sb-hc-id", "my-sb-hc-id=1&x=sb-hc-id"),
    # '=' inside the value: split on the first one only
    ("sb-hc-token=a=b=c&k=v=w", "k=v=w"),
    # near misses are kept
    ("sb-hc=1&sbhc-id=1&sb_hc_id=1", "sb-hc=1&sbhc-id=1&sb_hc_id=1"),
    ("&&sb-hc-id=1&&", "&&&"),  # five pieces, four empty ones kept
])
def test_filter_query_more_cases(raw, expected):
    assert filter_query(raw) == expected


def _filter_reference(raw: str) -> str:
    kept = []
    for piece in raw.split("&"):
        name, sep, _ = piece.partition("=")
        if sep and unquote(name).lower().startswith("sb-hc-"):
            continue
        kept.append(piece)
    return "&".join(kept)


_names = st.one_of(
    st.sampled_from(["sb-hc-action", "SB-HC-ID", "sb-hc-token", "sb%2Dhc%2Did", "%73b-hc-x", "sb-hc-",
                     "sb-hc", "custom", "a", "", "sb hc-id", "x-sb-hc-id", "%zz", "%"]),
    st.text(alphabet="sbhcSBHC-%2D37x=", max_size=10),
    st.text(max_size=8).map(lambda t: t.replace("&", "").replace("=", "")),
)
_values = st.text(max_size=10).map(lambda t: t.replace("&", ""))


@st.composite
def _queries(draw):
    pieces = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 2))
        name = draw(_names).replace("&", "")
        if kind == 0:
            pieces.append(f"{name}={draw(_values)}")
        elif kind == 1:
            pieces.append(name.replace("=", ""))  # no '=' at all
        else:
            pieces.append("")
    return "&".join(pieces)


@given(st.one_of(_queries(), st.text(alphabet="sbhc-SBHC%2D=&x1 +", max_size=40), st.text(max_size=40)))
def test_property_filter_query(raw):
    result = filter_query(raw)
    # never keeps a piece whose decoded name starts with sb-hc- ...
    for piece in result.split("&"):
        name, sep, _ = piece.partition("=")
        assert not (sep and unquote(name).lower().startswith("sb-hc-"))
    # ... and keeps every other piece verbatim, in order
    expected = [p for p in raw.split("&")
                if not ("=" in p and unquote(p.partition("=")[0]).lower().startswith("sb-hc-"))]
    assert result == "&".join(expected)
    assert result == _filter_reference(raw)
    # idempotent
    assert filter_query(result) == result


# -- query_params ---------------------------------------------------------------------------------

def test_query_params_decoding():
    params = query_params("sb-hc-action=listen&SB-HC-ID=Abc%20D&x=a+b&y=%2B&z=")
    assert params == {"sb-hc-action": "listen", "sb-hc-id": "Abc D", "x": "a b", "y": "+", "z": ""}


def test_query_params_first_occurrence_wins():
    assert query_params("a=1&A=2&a=3")["a"] == "1"
    assert query_params("sb-hc-action=listen&sb-hc-action=connect")["sb-hc-action"] == "listen"


def test_query_params_names_decoded_and_lowercased():
    assert query_params("Sb%2DHc%2DAction=Accept") == {"sb-hc-action": "Accept"}


def test_query_params_ignores_pieces_without_equals():
    assert query_params("flag&&a=1&") == {"a": "1"}
    assert query_params("") == {}


def test_query_params_value_keeps_equals():
    assert query_params("sb-hc-token=a%3Db=c")["sb-hc-token"] == "a=b=c"


def test_query_params_utf8():
    assert query_params("n=%C3%B8")["n"] == "\u00f8"


def test_token_in_query_round_trips_and_verifies():
    """Node §4.2: append ``&sb-hc-token=`` + encodeURIComponent(token); the relay decodes it once."""
    token = build_token("ws://127.0.0.1:9000/$hc/hyco", "rule", "k+/=", 1_700_003_600)
    target = parse_hc_target(f"/$hc/hyco?sb-hc-action=listen&sb-hc-token={quote(token, safe='')}")
    assert target is not None
    assert target.params["sb-hc-token"] == token
    rules = {"rule": RuleKeys("rule", "k+/=", "", Rights.LISTEN)}
    assert authorize(target.params["sb-hc-token"], target=("hyco",), lookup=rules.get,
                     needed=Rights.LISTEN, now=1_700_000_000).skn == "rule"


# -- parse_hc_target --------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["/$hc/", "/%24hc/", "/$HC/", "/$Hc/", "/%24HC/", "/%24Hc/"])
def test_parse_hc_target_prefixes(prefix):
    target = parse_hc_target(f"{prefix}hyco?sb-hc-action=listen&sb-hc-id=42")
    assert isinstance(target, HcTarget)
    assert target.raw_path == "hyco"
    assert target.query == "sb-hc-action=listen&sb-hc-id=42"
    assert target.params == {"sb-hc-action": "listen", "sb-hc-id": "42"}
    assert target.action == "listen"


@pytest.mark.parametrize("path", [
    "/hyco", "/", "", "/$hc", "/%24hc", "/$hcx/hyco", "/hc/hyco", "/x/$hc/hyco", "$hc/hyco",
    "/%2524hc/hyco", "//$hc/hyco", "/%24hc",
])
def test_parse_hc_target_other_paths(path):
    assert parse_hc_target(path) is None
    assert parse_hc_target(path + "?sb-hc-action=listen") is None


def test_missing_action_means_connect():
    assert parse_hc_target("/$hc/hyco").action == "connect"
    assert parse_hc_target("/$hc/hyco?").action == "connect"
    assert parse_hc_target("/$hc/hyco?sb-hc-token=x&app=1").action == "connect"
    assert parse_hc_target("/$hc/hyco?sb-hc-action").action == "connect"


@pytest.mark.parametrize("action", ACTIONS)
def test_action_is_lowercased(action):
    assert parse_hc_target(f"/$hc/h?sb-hc-action={action.upper()}").action == action


def test_actions_constant():
    assert ACTIONS == ("listen", "accept", "connect", "request")


def test_no_query():
    target = parse_hc_target("/$hc/a/b")
    assert (target.raw_path, target.query, target.params) == ("a/b", "", {})


def test_query_split_at_first_question_mark():
    target = parse_hc_target("/$hc/hyco?a=?b&sb-hc-action=connect")
    assert target.raw_path == "hyco"
    assert target.query == "a=?b&sb-hc-action=connect"
    assert target.params["a"] == "?b"


def test_raw_path_kept_encoded_and_decoded_path():
    target = parse_hc_target("/$hc/my%20hc/Sub%2Fx/%C3%B8?x=1")
    assert target.raw_path == "my%20hc/Sub%2Fx/%C3%B8"
    assert target.decoded_path == "my hc/Sub/x/\u00f8"


@pytest.mark.parametrize("raw, n, suffix", [
    ("a/b/c/d", 1, "/b/c/d"),
    ("a/b/c/d", 2, "/c/d"),
    ("a/b/c/d", 3, "/d"),
    ("a/b/c/d", 4, ""),
    ("a/b/c/d", 5, ""),
    ("hyco", 1, ""),
    ("hyco/suffix", 1, "/suffix"),
    ("hyco/s%20x/%2F", 1, "/s%20x/%2F"),  # raw encoding kept
    ("a/b", 0, "/a/b"),
])
def test_raw_suffix(raw, n, suffix):
    assert HcTarget(raw, "").raw_suffix(n) == suffix


def test_raw_suffix_for_multi_segment_name_from_target():
    target = parse_hc_target("/$hc/team/orders/v1/items?app=1&sb-hc-action=connect")
    name = "team/orders"
    assert target.raw_suffix(name.count("/") + 1) == "/v1/items"
    assert path_segments(name) + path_segments(target.raw_suffix(2)) == ("team", "orders", "v1", "items")


# -- build_address ----------------------------------------------------------------------------------

def test_build_address_shape():
    address = build_address("wss://relay.example:443", "hyco/suffix", "a=1&b=x%20y",
                            action="accept", id="conn 1/2&3")
    assert address == ("wss://relay.example:443/$hc/hyco/suffix?a=1&b=x%20y"
                       "&sb-hc-action=accept&sb-hc-id=conn%201%2F2%263")


def test_build_address_sb_hc_params_after_app_query_in_kwarg_order():
    address = build_address("ws://h:1", "x", "z=9", action="request", id="i", statusCode="404")
    query = address.split("?", 1)[1]
    assert query.split("&") == ["z=9", "sb-hc-action=request", "sb-hc-id=i", "sb-hc-statusCode=404"]


def test_build_address_without_app_query():
    assert build_address("ws://127.0.0.1:9000", "hyco", "", action="accept", id="1") == \
        "ws://127.0.0.1:9000/$hc/hyco?sb-hc-action=accept&sb-hc-id=1"


def test_build_address_slashes_normalised_between_base_and_path():
    assert build_address("ws://h:1/", "/hyco", "", action="accept").startswith("ws://h:1/$hc/hyco?")


def test_build_address_values_fully_encoded():
    value = "a+b c/d?e=f&g#h%\u00f8"
    address = build_address("ws://h", "p", "", token=value)
    query = address.split("?", 1)[1]
    assert query == "sb-hc-token=" + quote(value, safe="")
    assert query_params(query)["sb-hc-token"] == value


def test_build_address_round_trips_through_parse_hc_target():
    address = build_address("wss://relay:443", "team/orders/v1", filter_query("x=1&sb-hc-id=old&y=2"),
                            action="accept", id="abc")
    target = parse_hc_target(address[len("wss://relay:443"):])
    assert target.raw_path == "team/orders/v1"
    assert target.action == "accept"
    assert target.params["sb-hc-id"] == "abc"
    assert filter_query(target.query) == "x=1&y=2"


# -- path_segments ------------------------------------------------------------------------------

@pytest.mark.parametrize("path, segments", [
    ("", ()),
    ("/", ()),
    ("hyco", ("hyco",)),
    ("/HyCo/", ("hyco",)),
    ("//a//B///c", ("a", "b", "c")),
    ("/my%20hc/%C3%98", ("my hc", "\u00f8")),
    ("team/orders", ("team", "orders")),
])
def test_path_segments(path, segments):
    assert path_segments(path) == segments


@pytest.mark.parametrize("app_query", ["a=1&a=2&", "&&&", "x=1&&y=2", "&a=1"])
def test_accept_address_preserves_app_query_verbatim(app_query):
    address = build_address("wss://relay:443", "hyco", app_query, action="accept", id="1")
    listener_sees = filter_query(address.split("?", 1)[1])
    assert listener_sees == app_query


@pytest.mark.parametrize("app_query", ["", "a=1", "a=1&b=%20&c"])
def test_accept_address_app_query_without_empty_pieces(app_query):
    address = build_address("wss://relay:443", "hyco", app_query, action="accept", id="1")
    assert filter_query(address.split("?", 1)[1]) == app_query
