"""Tests for hyrelay.store against a real SQLite file."""

from __future__ import annotations

import base64
import sqlite3
import threading

import pytest

from hyrelay.store import (
    MAX_RULES,
    ROOT_RULE,
    AlreadyExists,
    InvalidKey,
    InvalidName,
    InvalidRights,
    LimitExceeded,
    NotFound,
    SqliteStore,
    Store,
    StoreError,
    generate_key,
    normalize_rights,
    open_store,
    validate_hc_name,
    validate_namespace_name,
    validate_rule_name,
)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def ns(store):
    return store.create_namespace("contoso").name


def test_open_store_creates_file_in_wal_mode(tmp_path, store):
    db = tmp_path / "data" / "hyrelay.db"
    assert db.exists()
    assert isinstance(store, Store)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    con.close()


def test_reopen_keeps_data(tmp_path):
    s = SqliteStore(tmp_path / "x.db")
    s.create_namespace("contoso")
    s.close()
    s = SqliteStore(tmp_path / "x.db")
    assert [n.name for n in s.list_namespaces()] == ["contoso"]
    s.close()


def test_refuses_newer_schema(tmp_path):
    SqliteStore(tmp_path / "x.db").close()
    con = sqlite3.connect(tmp_path / "x.db")
    with con:
        con.execute("INSERT INTO schema_version VALUES (99)")
    con.close()
    with pytest.raises(StoreError, match="upgrade hyrelay"):
        SqliteStore(tmp_path / "x.db")


def test_generate_key():
    key = generate_key()
    assert len(key) == 44 and len(base64.b64decode(key, validate=True)) == 32
    assert key != generate_key()


def test_ensure_default_is_idempotent(store):
    ns1, rule1 = store.ensure_default()
    ns2, rule2 = store.ensure_default()
    assert ns1 == ns2 and ns1.name == "hyrelay"
    assert rule1 == rule2
    assert rule1.name == ROOT_RULE and rule1.entity is None
    assert rule1.rights == ("Listen", "Send", "Manage")
    assert ns1.created_at.endswith("Z") and "T" in ns1.created_at


def test_namespace_crud(store):
    created = store.create_namespace("Contoso-1")
    assert store.get_namespace("contoso-1") == created  # case-insensitive
    assert [r.name for r in store.list_rules("contoso-1")] == [ROOT_RULE]
    with pytest.raises(AlreadyExists):
        store.create_namespace("CONTOSO-1")
    bare = store.create_namespace("fabrikam", root_rule=False)
    assert store.list_rules(bare.name) == []
    assert [n.name for n in store.list_namespaces()] == ["Contoso-1", "fabrikam"]
    store.delete_namespace("contoso-1")
    with pytest.raises(NotFound):
        store.get_namespace("Contoso-1")
    with pytest.raises(NotFound):
        store.delete_namespace("Contoso-1")


def test_hc_crud_and_case_insensitive(store, ns):
    hc = store.create_hc(ns, "Orders/EU", user_metadata="m")
    assert hc.requires_client_authorization is True and hc.created_at == hc.updated_at
    assert store.get_hc(ns.upper(), "orders/eu") == hc  # stored case preserved
    with pytest.raises(AlreadyExists, match="Orders/EU"):
        store.create_hc(ns, "ORDERS/eu")
    updated = store.update_hc(ns, "orders/EU", requires_client_authorization=False)
    assert updated.requires_client_authorization is False and updated.user_metadata == "m"
    assert updated.name == "Orders/EU"
    assert store.get_hc(ns, "Orders/EU") == updated
    assert store.update_hc(ns, "Orders/EU", user_metadata="").user_metadata == ""
    store.create_hc(ns, "alpha")
    assert [h.name for h in store.list_hcs(ns)] == ["alpha", "Orders/EU"]
    store.delete_hc(ns, "ORDERS/EU")
    with pytest.raises(NotFound):
        store.get_hc(ns, "Orders/EU")
    with pytest.raises(NotFound):
        store.create_hc("nosuchns", "x")


def test_rule_crud(store, ns):
    store.create_hc(ns, "hyco")
    r = store.create_rule(ns, "HYCO", "sender", ["send", "SEND"], primary_key="k1")
    assert r.entity == "hyco" and r.rights == ("Send",) and r.primary_key == "k1"
    assert len(r.secondary_key) == 44
    assert store.get_rule(ns, "hyco", "sender") == r
    assert store.list_rules(ns, "hyco") == [r]
    assert [x.name for x in store.list_rules(ns)] == [ROOT_RULE]  # namespace level only
    with pytest.raises(NotFound):
        store.get_rule(ns, None, "sender")
    with pytest.raises(NotFound):
        store.get_rule(ns, "hyco", "Sender")  # rule names are case-sensitive
    with pytest.raises(AlreadyExists):
        store.create_rule(ns, "hyco", "sender", ["Listen"])
    # the same name at another scope is a different rule
    store.create_rule(ns, None, "sender", ["Send"])
    store.delete_rule(ns, "hyco", "sender")
    assert store.list_rules(ns, "hyco") == []
    assert store.get_rule(ns, None, "sender").entity is None
    with pytest.raises(NotFound):
        store.delete_rule(ns, "hyco", "sender")
    with pytest.raises(NotFound):
        store.create_rule(ns, "nohc", "r", ["Send"])




def test_out_of_range_hc_settings_are_invalid(store, ns):
    for settings in ({"request_timeout": -1}, {"max_listeners": 0}, {"max_listeners": 10_001}):
        with pytest.raises(InvalidName):
            store.create_hc(ns, "hc", **settings)
    store.create_hc(ns, "hc", request_timeout=0, max_listeners=1)
    with pytest.raises(InvalidName, match="request timeout"):
        store.update_hc(ns, "hc", request_timeout=-0.5)

def test_update_rule_keeps_keys(store, ns):
    store.create_hc(ns, "hyco")
    r = store.create_rule(ns, "hyco", "r", ["Send"])
    updated = store.update_rule(ns, "HYCO", "r", ["listen", "Send"])
    assert updated.rights == ("Listen", "Send")
    assert (updated.primary_key, updated.secondary_key) == (r.primary_key, r.secondary_key)
    assert store.get_rule(ns, "hyco", "r") == updated
    with pytest.raises(InvalidRights):
        store.update_rule(ns, "hyco", "r", [])
    with pytest.raises(NotFound):
        store.update_rule(ns, None, "r", ["Send"])


def test_cascade_deletes(store, ns):
    store.create_hc(ns, "a")
    store.create_rule(ns, "a", "r", ["Listen"])
    store.delete_hc(ns, "a")
    store.create_hc(ns, "a")
    assert store.list_rules(ns, "a") == []  # recreated HC does not inherit old rules
    store.create_rule(ns, "a", "r", ["Listen"])
    store.delete_namespace(ns)
    store.create_namespace(ns, root_rule=False)
    assert store.list_hcs(ns) == [] and store.list_rules(ns) == []
    snap = store.snapshot()
    assert snap.rules_for(ns, "a", "r") is None and snap.hcs(ns) == []


def test_regenerate_changes_exactly_one_key(store, ns):
    r = store.create_rule(ns, None, "app", ["Listen", "Send"])
    p = store.regenerate_key(ns, None, "app", "primary")
    assert p.primary_key != r.primary_key and p.secondary_key == r.secondary_key
    s = store.regenerate_key(ns, None, "app", "SecondaryKey", key="explicit=")
    assert s.secondary_key == "explicit=" and s.primary_key == p.primary_key
    assert store.get_rule(ns, None, "app") == s
    with pytest.raises(StoreError):
        store.regenerate_key(ns, None, "app", "tertiary")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        store.regenerate_key(ns, None, "app", "primary", key="has;semicolon")


def test_rule_limit_per_scope(store, ns):
    store.create_hc(ns, "h")
    for i in range(MAX_RULES - 1):  # the root rule is the first namespace rule
        store.create_rule(ns, None, f"r{i}", ["Send"])
    with pytest.raises(LimitExceeded, match="delete one"):
        store.create_rule(ns, None, "one-too-many", ["Send"])
    for i in range(MAX_RULES):
        store.create_rule(ns, "h", f"r{i}", ["Send"])
    with pytest.raises(LimitExceeded):
        store.create_rule(ns, "h", "one-too-many", ["Send"])


@pytest.mark.parametrize(
    "name", ["abcde", "a" * 51, "1abcde", "abcde-", "abc_def", "abc.def", "", "abcdé1"]
)
def test_invalid_namespace_names(store, name):
    with pytest.raises(InvalidName):
        store.create_namespace(name)


def test_valid_names():
    assert validate_namespace_name("abcdef") == "abcdef"
    assert validate_namespace_name("a" * 50)
    assert validate_namespace_name("hyrelay")
    assert validate_hc_name("a")
    assert validate_hc_name("a.b-c_d/E/..x/f..")
    assert validate_hc_name("x" * 260)
    assert validate_rule_name("r" * 256)


@pytest.mark.parametrize(
    "name",
    ["", "x" * 261, "$hc", "/a", "a/", "a//b", "a/./b", "../a", "a b", "a?b", "a%2f", "é", "a\\b"],
)
def test_invalid_hc_names(store, ns, name):
    with pytest.raises(InvalidName):
        store.create_hc(ns, name)


@pytest.mark.parametrize("name", ["", "r" * 257, "a/b", "a b", "$x"])
def test_invalid_rule_names(store, ns, name):
    with pytest.raises(InvalidName):
        store.create_rule(ns, None, name, ["Send"])


def test_rights_normalization():
    assert normalize_rights(["manage", "LISTEN", "Send"]) == ("Listen", "Send", "Manage")
    assert normalize_rights("send, listen") == ("Listen", "Send")
    with pytest.raises(InvalidRights):
        normalize_rights([])
    with pytest.raises(InvalidRights):
        normalize_rights(["Listen", "Receive"])
    assert issubclass(InvalidRights, StoreError)


def test_version_sees_writes_from_another_instance(tmp_path):
    a = open_store(tmp_path)
    b = open_store(tmp_path)
    try:
        v0 = a.version()
        assert a.version() == v0  # stable when nothing changed
        b.create_namespace("contoso")
        v1 = a.version()
        assert v1 != v0
        a.create_hc("contoso", "hc")  # a local write changes it too
        v2 = a.version()
        assert v2 not in (v0, v1)
        b.update_hc("contoso", "hc", user_metadata="x")
        assert a.version() != v2
        assert a.snapshot().find_hc("contoso", "hc")[0].user_metadata == "x"
    finally:
        a.close()
        b.close()


def test_snapshot_version_matches_store(store, ns):
    snap = store.snapshot()
    assert snap.version == store.version()
    with pytest.raises(AttributeError):
        snap.version = 0  # type: ignore[misc]
    store.create_hc(ns, "x")
    assert store.version() != snap.version
    assert snap.find_hc(ns, "x") is None  # snapshots never change


def test_snapshot_find_hc(store, ns):
    for name in ("a", "a/b", "hyco", "Deep/er/Name"):
        store.create_hc(ns, name)
    snap = store.snapshot()

    def find(path):
        hit = snap.find_hc(ns, path)
        return None if hit is None else (hit[0].name, hit[1])

    assert find("a") == ("a", "")
    assert find("a/b") == ("a/b", "")
    assert find("a/b/c") == ("a/b", "/c")
    assert find("a/bc") == ("a", "/bc")
    assert find("a/") == ("a", "/")
    assert find("A/B/c/d") == ("a/b", "/c/d")  # case-insensitive, suffix case kept
    assert find("hyco") == ("hyco", "")
    assert find("hyco2") is None  # segment boundaries only
    assert find("hyco2/x") is None
    assert find("hyco/x?y") == ("hyco", "/x?y")
    assert find("deep/ER/name/x") == ("Deep/er/Name", "/x")
    assert find("deep/er") is None
    assert find("") is None
    assert snap.find_hc("nosuchns", "a") is None
    assert snap.find_hc(ns.upper(), "a")[0].name == "a"

    flat = "flatns"  # no name with a slash: the first segment decides alone
    store.create_namespace(flat)
    for name in ("hyco", "Other"):
        store.create_hc(flat, name)
    snap = store.snapshot()
    hits = {path: snap.find_hc(flat, path) for path in ("hyco", "/HYCO/x?y", "hyco/", "other//z", "hyco2", "", "/")}
    assert {p: None if h is None else (h[0].name, h[1]) for p, h in hits.items()} == {
        "hyco": ("hyco", ""), "/HYCO/x?y": ("hyco", "/x?y"), "hyco/": ("hyco", "/"), "other//z": ("Other", "//z"),
        "hyco2": None, "": None, "/": None}
    assert snap.namespace(ns.upper()).name == ns
    assert snap.namespace("nosuchns") is None
    assert [h.name for h in snap.hcs(ns)] == ["a", "a/b", "Deep/er/Name", "hyco"]
    assert snap.hcs("nosuchns") == []


def test_snapshot_rules_for_precedence(store, ns):
    store.create_hc(ns, "hyco")
    ns_rule = store.create_rule(ns, None, "app", ["Listen"])
    hc_rule = store.create_rule(ns, "hyco", "app", ["Send"])
    only_hc = store.create_rule(ns, "hyco", "hconly", ["Send"])
    snap = store.snapshot()
    assert snap.rules_for(ns, "HYCO", "app") == hc_rule  # entity first
    assert snap.rules_for(ns, "other", "app") == ns_rule  # falls back to namespace
    assert snap.rules_for(ns, None, "app") == ns_rule
    assert snap.rules_for(ns, "hyco", ROOT_RULE).name == ROOT_RULE
    assert snap.rules_for(ns, "hyco", "hconly") == only_hc
    assert snap.rules_for(ns, None, "hconly") is None  # entity rules never apply elsewhere
    assert snap.rules_for(ns, "hyco", "APP") is None  # key names are exact
    assert snap.rules_for("nosuchns", None, "app") is None


def test_threads_share_one_store(store, ns):
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            store.create_hc(ns, f"t{i}")
            store.snapshot()
        except BaseException as exc:  # surfaced below; a thread can't fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(store.list_hcs(ns)) == 8
