"""`hyrelay hc|rule|namespace --server URL`: the CLI through the admin API of an in-process relay.

Each command should print what it prints in local mode; the tests run both and compare.
The CLI is synchronous, so it runs in a thread while the relay serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hyrelay.cli import main
from hyrelay.protocol.sas import ConnectionString
from hyrelay.store import MAX_RULES, ROOT_RULE

from .wsutil import refused, ws_connect

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HYRELAY_"):
            monkeypatch.delenv(name)


def _invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


@pytest.fixture
def root_cs(relay) -> str:
    return relay.server.connection_string()


@pytest.fixture
def remote(relay, root_cs):
    """Run a command against the relay: ``await remote("hc", "list")``."""

    async def run(*args: str, cs: str | None = None, env: dict[str, str] | None = None) -> Result:
        extra = ["--server", relay.http, "--connection-string", cs or root_cs]
        return await asyncio.to_thread(_invoke, [*args, *extra], env)

    return run


@pytest.fixture
def local(tmp_path: Path):
    """Run a command against a separate local data dir, for comparison."""

    def run(*args: str) -> Result:
        return _invoke([*args, "--data-dir", str(tmp_path / "local")])

    return run


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def same(text: str) -> str:
    """Output with timestamps blanked, so local and remote runs compare."""
    return TIME.sub("TIME", text)


def failed(result: Result, code: int, *phrases: str) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == "" and "Error: " in result.stderr and "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    return result.stderr


async def test_hc_commands_print_what_local_mode_prints(relay, remote, local) -> None:
    steps = [
        ("hc", "create", "orders"),
        ("hc", "create", "a/b", "--no-client-auth", "--user-metadata", "x=1", "--request-timeout", "30",
         "--max-listeners", "2", "--multicast", "--json"),
        ("hc", "show", "ORDERS"),
        ("hc", "show", "a/b", "--json"),
        ("hc", "list"),
        ("hc", "list", "--json"),
        ("hc", "update", "a/b", "--request-timeout", "default", "--no-multicast", "--client-auth"),
        ("hc", "update", "orders", "--max-listeners", "5", "--user-metadata", "", "--json"),
        ("hc", "delete", "orders"),
        ("hc", "delete", "a/b", "--json"),
        ("hc", "list"),
    ]
    for step in steps:
        assert same(ok(await remote(*step))) == same(ok(local(*step))), step
    # The relay's store has what the commands asked for.
    assert relay.store.list_hcs("hyrelay") == []


async def test_hc_settings_round_trip(relay, remote) -> None:
    made = json.loads(ok(await remote("hc", "create", "svc", "--request-timeout", "0", "--max-listeners", "3",
                                      "--multicast", "--json")))
    assert (made["request_timeout"], made["max_listeners"], made["multicast"]) == (0.0, 3, True)
    shown = ok(await remote("hc", "show", "svc")).splitlines()
    assert "request timeout:       no limit" in shown and "max listeners:         3" in shown
    assert "multicast:             on" in shown
    updated = json.loads(ok(await remote("hc", "update", "svc", "--max-listeners", "default", "--json")))
    assert updated["max_listeners"] is None and updated["request_timeout"] == 0.0
    hc = relay.store.get_hc("hyrelay", "svc")
    assert (hc.max_listeners, hc.request_timeout, hc.multicast) == (None, 0.0, True)
    failed(await remote("hc", "update", "svc"), 2, "nothing to change")
    failed(await remote("hc", "update", "svc", "--request-timeout", "soon"), 2, "'soon' is not a number")
    failed(await remote("hc", "update", "svc", "--max-listeners", "0"), 1, "max listeners must be between 1")
    failed(await remote("hc", "update", "svc", "--request-timeout", "-5"), 1, "request timeout must be 0")


async def test_remote_changes_take_effect_at_once(relay, remote) -> None:
    ok(await remote("hc", "create", "instant"))
    control = await ws_connect(f"{relay.ws}/$hc/instant?sb-hc-action=listen", relay.auth("instant"))
    ok(await remote("hc", "update", "instant", "--max-listeners", "1"))
    assert (await refused(f"{relay.ws}/$hc/instant?sb-hc-action=listen", relay.auth("instant")))[0] == 403
    ok(await remote("hc", "delete", "instant"))
    await asyncio.wait_for(control.wait_closed(), 10)
    assert control.close_code == 1001


async def test_store_errors_exit_1_with_the_relays_message(relay, remote) -> None:
    ok(await remote("hc", "create", "dup"))
    failed(await remote("hc", "create", "DUP"), 1, "already exists", "TrackingId:")
    failed(await remote("hc", "show", "nope"), 1, "hybrid connection 'nope' does not exist", "TrackingId:")
    failed(await remote("hc", "delete", "nope"), 1, "hybrid connection 'nope' does not exist")
    failed(await remote("hc", "create", "$bad"), 1, "must not start with '$'")
    failed(await remote("rule", "create", "r", "--rights", "Listen,Fly"), 1, "unknown right 'Fly'")
    failed(await remote("rule", "create", "r", "--rights", "Send", "--hc", "nope"), 1, "'nope' does not exist")
    failed(await remote("rule", "delete", "nope"), 1, "rule 'nope' does not exist on namespace 'hyrelay'")
    for i in range(MAX_RULES - 1):
        ok(await remote("rule", "create", f"r{i}", "--rights", "Send"))
    failed(await remote("rule", "create", "one-too-many", "--rights", "Send"), 1, f"already has {MAX_RULES} rules")


async def test_rule_commands(relay, remote, local) -> None:
    ok(await remote("hc", "create", "orders"))
    local("hc", "create", "orders")
    made = json.loads(ok(await remote("rule", "create", "sender", "--rights", "send,listen", "--json")))
    stored = relay.store.get_rule("hyrelay", None, "sender")
    assert made == {"namespace": "hyrelay", "entity": None, "name": "sender", "primary_key": stored.primary_key,
                    "secondary_key": stored.secondary_key, "rights": ["Listen", "Send"],
                    "created_at": stored.created_at}
    human = ok(await remote("rule", "create", "l", "--rights", "Listen", "--hc", "orders")).splitlines()
    assert human[0] == "created rule 'l' on hybrid connection 'orders'"
    assert human[2].split()[-1] == relay.store.get_rule("hyrelay", "orders", "l").primary_key
    assert json.loads(ok(await remote("rule", "show", "sender", "--json"))) == made

    ok(local("rule", "create", "sender", "--rights", "Listen,Send"))
    ok(local("rule", "create", "l", "--rights", "Listen", "--hc", "orders"))
    for step in [("rule", "list"), ("rule", "list", "--json"), ("rule", "list", "--hc", "orders", "--json")]:
        assert same(ok(await remote(*step))) == same(ok(local(*step))), step

    regen = json.loads(ok(await remote("rule", "regenerate-key", "sender", "--json")))
    assert regen["primary_key"] != made["primary_key"] and regen["secondary_key"] == made["secondary_key"]
    regen2 = json.loads(ok(await remote("rule", "regenerate-key", "sender", "--secondary", "--json")))
    assert regen2["primary_key"] == regen["primary_key"] and regen2["secondary_key"] != made["secondary_key"]
    assert relay.store.get_rule("hyrelay", None, "sender").secondary_key == regen2["secondary_key"]
    out = ok(await remote("rule", "regenerate-key", "l", "--hc", "orders"))
    assert out.startswith("regenerated the primary key of rule 'l' on hybrid connection 'orders'\n")

    assert json.loads(ok(await remote("rule", "delete", "sender", "--json"))) == {
        "deleted": "rule", "namespace": "hyrelay", "entity": None, "name": "sender"}
    assert ok(await remote("rule", "delete", "l", "--hc", "orders")) == \
        "deleted rule 'l' from hybrid connection 'orders'\n"
    assert [r["name"] for r in json.loads(ok(await remote("rule", "list", "--json")))] == [ROOT_RULE]


async def test_namespace_commands(relay, remote, local) -> None:
    local("hc", "list")  # creates the local store with its default namespace
    steps = [
        ("namespace", "create", "contoso-eu"),
        ("namespace", "create", "fabrikam-1", "--json"),
        ("namespace", "list"),
        ("namespace", "list", "--json"),
        ("namespace", "delete", "contoso-eu"),
        ("namespace", "delete", "fabrikam-1", "--json"),
        ("namespace", "list"),
    ]
    for step in steps:
        assert same(ok(await remote(*step))) == same(ok(local(*step))), step
    lines = ok(await remote("namespace", "list")).splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "CURRENT"] and lines[1].split()[::2] == ["hyrelay", "yes"]
    failed(await remote("namespace", "create", "hyrelay"), 1, "already exists")
    failed(await remote("namespace", "create", "bad"), 1, "invalid namespace name")
    failed(await remote("namespace", "delete", "gone-away"), 1, "namespace 'gone-away' does not exist")
    failed(await remote("namespace", "delete", "hyrelay"), 1, "the one this relay serves")
    failed(local("namespace", "delete", "hyrelay"), 1, "the one the relay serves")
    assert relay.store.get_namespace("hyrelay").name == "hyrelay"


async def test_credentials_and_usage(relay, remote, root_cs) -> None:
    listen_rule = relay.create_rule("listener", ("Listen",))
    base = f"http://127.0.0.1:{relay.port}/"
    listen_cs = str(ConnectionString(base, listen_rule.name, listen_rule.primary_key))
    failed(await remote("hc", "list", cs=listen_cs), 1, "the relay refused the connection string",
           "does not grant Manage", "TrackingId:")
    wrong_key = str(ConnectionString(base, ROOT_RULE, "d3Jvbmcga2V5IQ=="))
    failed(await remote("hc", "list", cs=wrong_key), 1, "invalid signature")
    failed(await remote("hc", "list", cs="Endpoint=sb://x/;SharedAccessKeyName=only-a-name"), 2,
           "invalid connection string")
    failed(await remote("hc", "list", cs="no endpoint here"), 2, "invalid connection string")

    runs = [
        (["hc", "list", "--server", relay.http], 2, "--server needs the connection string"),
        (["hc", "list", "--connection-string", root_cs], 2, "--connection-string needs --server"),
        (["hc", "list", "--server", "ftp://x", "--connection-string", root_cs], 2, "invalid server URL"),
        (["hc", "list", "--server", f"{relay.http}/base", "--connection-string", root_cs], 2, "without a path"),
        (["hc", "list", "--server", relay.http, "--connection-string", root_cs, "--namespace", "another-one"],
         2, "--namespace does not apply with --server"),
        (["hc", "list", "--server", "http://127.0.0.1:9", "--connection-string", root_cs], 1,
         "cannot reach the relay at http://127.0.0.1:9"),
    ]
    for args, code, phrase in runs:
        failed(await asyncio.to_thread(_invoke, args), code, phrase)

    # The environment works as well as the flags, and HYRELAY_CONNECTION_STRING alone keeps local mode.
    env = {"HYRELAY_SERVER": relay.http, "HYRELAY_CONNECTION_STRING": root_cs}
    ok(await asyncio.to_thread(_invoke, ["hc", "create", "from-env"], env))
    assert relay.store.get_hc("hyrelay", "from-env").name == "from-env"
    out = ok(await asyncio.to_thread(_invoke, ["hc", "list", "--data-dir", str(Path(relay.store.path).parent.parent
                                                                               / "elsewhere")],
                                     {"HYRELAY_CONNECTION_STRING": root_cs}))
    assert out == "no hybrid connections in namespace 'hyrelay'\n"
