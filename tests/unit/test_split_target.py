"""How the SDK splits a relayed request target into the hybrid connection's prefix and the rest."""

from hyrelay.client.http import split_target


def test_plain_names_and_suffixes():
    assert split_target("/myhc/api/x?a=1", "myhc") == ("/myhc", "/api/x", "a=1")
    assert split_target("/MyHC", "myhc") == ("/MyHC", "/", "")
    assert split_target("/a/b/c", "a/b") == ("/a/b", "/c", "")


def test_a_name_with_an_escaped_slash_keeps_the_suffix():
    assert split_target("/orders%2FEU/x?q", "orders/EU") == ("/orders%2FEU", "/x", "q")
    assert split_target("/orders%2feu", "orders/EU") == ("/orders%2feu", "/", "")
    assert split_target("/my%20hc/x", "my hc") == ("/my%20hc", "/x", "")


def test_a_target_outside_the_name_keeps_its_whole_path():
    assert split_target("/other/x", "myhc") == ("", "/other/x", "")
    assert split_target("/orders%2FUS/x", "orders/EU") == ("", "/orders%2FUS/x", "")
    assert split_target("/orders", "orders/EU") == ("", "/orders", "")
    assert split_target("", "myhc") == ("", "/", "")
