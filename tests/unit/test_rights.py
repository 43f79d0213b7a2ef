"""Pure tests for hyrelay.protocol.rights (spec §5.4)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyrelay.protocol.rights import Rights

L, S, M, N = Rights.LISTEN, Rights.SEND, Rights.MANAGE, Rights.NONE
ALL = [N, L, S, M, L | S, L | M, S | M, L | S | M]


@pytest.mark.parametrize("names, expected", [
    ([], N),
    (["Listen"], L),
    (["listen"], L),
    (["LISTEN"], L),
    (["sEnD"], S),
    (["Manage"], M),
    ([" Listen ", "\tSend\n"], L | S),
    (("Listen", "Send", "Manage"), L | S | M),
    (["Send", "send", "SEND"], S),
    (iter(["Manage", "Listen"]), L | M),
])
def test_parse(names, expected):
    assert Rights.parse(names) == expected


@pytest.mark.parametrize("names", [["Receive"], ["Listen", "Admin"], [""], ["Listen,Send"], ["Owner"],
                                   ["Listen Send"], ["lis ten"]])
def test_parse_unknown_is_value_error(names):
    with pytest.raises(ValueError, match="unknown right"):
        Rights.parse(names)


@pytest.mark.parametrize("name", ["None", "none", "NONE"])
def test_parse_none_is_not_a_right(name):
    with pytest.raises(ValueError):
        Rights.parse([name])


@pytest.mark.parametrize("have, needed, ok", [
    (L, L, True), (L, S, False), (L, M, False),
    (S, S, True), (S, L, False), (S, M, False),
    (L | S, L, True), (L | S, S, True), (L | S, L | S, True), (L | S, M, False),
    # Manage implies Send and Listen
    (M, L, True), (M, S, True), (M, M, True), (M, L | S, True), (M, L | S | M, True),
    (N, L, False), (N, S, False), (N, M, False),
    (N, N, True), (L, N, True),
])
def test_grants(have, needed, ok):
    assert have.grants(needed) is ok


@given(st.sampled_from(ALL), st.sampled_from(ALL))
def test_property_grants(have, needed):
    effective = have | (L | S if M in have else N)
    assert have.grants(needed) == ((needed & ~effective) == N)
    if M in have:
        assert have.grants(L) and have.grants(S)
    if needed != N and M in needed:
        assert have.grants(needed) == (M in have)


@pytest.mark.parametrize("rights, names", [
    (N, ()),
    (L, ("Listen",)),
    (S, ("Send",)),
    (M, ("Manage",)),
    (M | L, ("Listen", "Manage")),
    (S | L, ("Listen", "Send")),
    (M | S, ("Send", "Manage")),
    (M | S | L, ("Listen", "Send", "Manage")),
])
def test_names_order(rights, names):
    assert rights.names() == names


@pytest.mark.parametrize("rights", ALL)
def test_names_round_trip(rights):
    assert Rights.parse(rights.names()) == rights


@given(st.lists(st.sampled_from(["Listen", "Send", "Manage"]), max_size=6), st.data())
def test_property_parse_any_order_and_case(names, data):
    cased = [data.draw(st.sampled_from([n, n.lower(), n.upper(), n.swapcase()])) for n in names]
    expected = N
    for n in names:
        expected |= Rights[n.upper()]
    assert Rights.parse(cased) == expected
    for perm in itertools.islice(itertools.permutations(cased), 6):
        assert Rights.parse(perm) == expected
