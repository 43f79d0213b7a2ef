"""The `hyrelay` command: data commands on a real SQLite store, settings precedence, and a
real `hyrelay serve` process that picks up CLI changes while it runs."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hyrelay.cli import main
from hyrelay.protocol.sas import build_token, parse_connection_string, parse_token
from hyrelay.settings import DEFAULT_DATA_DIR, ConfigError, load_toml, resolve_config
from hyrelay.store import MAX_RULES, ROOT_RULE, open_store

HANG_GUARD = 10.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HYRELAY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(data: Path):
    """Run a command against the test's data dir; returns the click Result."""
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(main, [*args, "--data-dir", str(data)], env=env, catch_exceptions=False)

    return run


def ok_json(result) -> object:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


# -- hc ----------------------------------------------------------------------------------------


def test_hc_create_show_list_delete(cli, data: Path) -> None:
    r = cli("hc", "create", "orders")
    assert r.exit_code == 0
    assert r.stdout == "created hybrid connection 'orders' in namespace 'hyrelay' (client authorization required)\n"
    made = ok_json(cli("hc", "create", "a/b", "--no-client-auth", "--user-metadata", "x=1", "--json"))
    assert made["name"] == "a/b" and made["namespace"] == "hyrelay"
    assert made["requires_client_authorization"] is False and made["user_metadata"] == "x=1"
    assert set(made) >= {"namespace", "name", "requires_client_authorization", "user_metadata",
                         "created_at", "updated_at"}

    shown = ok_json(cli("hc", "show", "ORDERS", "--json"))  # names are case-insensitive
    assert shown["name"] == "orders" and shown["requires_client_authorization"] is True
    human = cli("hc", "show", "a/b").stdout.splitlines()
    assert human[0].split() == ["name:", "a/b"]
    assert "client authorization:  not required" in human
    assert len({line.index(v) for line, v in zip(human, ["a/b", "hyrelay"])}) == 1  # aligned

    listed = ok_json(cli("hc", "list", "--json"))
    assert [h["name"] for h in listed] == ["a/b", "orders"]
    lines = cli("hc", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "CLIENT", "AUTH", "CREATED", "USER", "METADATA"]
    assert lines[1].split()[:2] == ["a/b", "none"] and lines[1].endswith("x=1")
    assert lines[2].split()[:2] == ["orders", "required"]
    assert lines[1].index("none") == lines[2].index("required") == lines[0].index("CLIENT AUTH")

    assert ok_json(cli("hc", "delete", "orders", "--json")) == {
        "deleted": "hybrid_connection", "namespace": "hyrelay", "name": "orders"}
    r = cli("hc", "delete", "a/b")
    assert r.exit_code == 0 and r.stdout == "deleted hybrid connection 'a/b' from namespace 'hyrelay'\n"
    assert ok_json(cli("hc", "list", "--json")) == []
    assert cli("hc", "list").stdout == "no hybrid connections in namespace 'hyrelay'\n"

    store = open_store(data)  # the CLI wrote through the ordinary store
    try:
        assert store.list_hcs("hyrelay") == []
    finally:
        store.close()


@pytest.mark.parametrize(("args", "message"), [
    (("hc", "create", "$bad"), "must not start with '$'"),
    (("hc", "create", "a//b"), "doubled '/'"),
    (("hc", "show", "nope"), "hybrid connection 'nope' does not exist"),
    (("hc", "delete", "nope"), "hybrid connection 'nope' does not exist"),
    (("rule", "create", "r", "--rights", "Listen", "--hc", "nope"), "'nope' does not exist"),
    (("rule", "create", "bad name", "--rights", "Listen"), "invalid rule name"),
    (("rule", "create", "r", "--rights", "Listen,Fly"), "unknown right 'Fly'"),
    (("rule", "create", "r", "--rights", ","), "unknown right ''"),
    (("rule", "delete", "nope"), "rule 'nope' does not exist on namespace 'hyrelay'"),
    (("rule", "regenerate-key", "nope"), "rule 'nope' does not exist"),
    (("token", "ws://h/$hc/x", "--rule", "nope"), "rule 'nope' does not exist"),
    (("connection-string", "--rule", "nope"), "rule 'nope' does not exist"),
])
def test_store_errors_exit_1_with_one_line(cli, args: tuple[str, ...], message: str) -> None:
    r = cli(*args)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: ")
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_duplicate_hc_exits_1(cli) -> None:
    assert cli("hc", "create", "dup").exit_code == 0
    r = cli("hc", "create", "DUP", "--json")
    assert r.exit_code == 1 and r.stdout == ""
    assert "already exists" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [
    ("hc", "create"),                                   # missing NAME
    ("hc", "frobnicate"),                               # unknown command
    ("rule", "create", "r"),                            # missing --rights
    ("token", "ws://h/x", "--rule", "r", "--ttl", "0"),  # bad ttl
    ("token", "not-a-uri", "--rule", ROOT_RULE),        # not a URI
    ("token", "ws://h/x", "--rule", "r", "--key-type", "tertiary"),
    ("connection-string", "--endpoint", "ftp://x"),
    ("hc", "list", "--namespace", "x"),                 # invalid namespace setting
])
def test_usage_errors_exit_2(cli, args: tuple[str, ...]) -> None:
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert "Error" in r.stderr and r.stdout == ""


# -- rule --------------------------------------------------------------------------------------


def test_rule_lifecycle_namespace_level(cli) -> None:
    made = ok_json(cli("rule", "create", "sender", "--rights", "send,listen", "--json"))
    assert made["name"] == "sender" and made["entity"] is None
    assert made["rights"] == ["Listen", "Send"]
    assert len(made["primary_key"]) == 44 and made["primary_key"] != made["secondary_key"]

    human = cli("rule", "create", "admin", "--rights", "Manage").stdout.splitlines()
    assert human[0] == "created rule 'admin' on namespace 'hyrelay'"
    assert human[1].split() == ["rights:", "Manage"]
    assert human[2].startswith("primary key:") and human[3].startswith("secondary key:")
    assert human[2].index(human[2].split()[-1]) == human[3].index(human[3].split()[-1])

    listed = ok_json(cli("rule", "list", "--json"))
    assert [r["name"] for r in listed] == [ROOT_RULE, "admin", "sender"]
    assert all("primary_key" not in r for r in listed)  # lists never show keys
    lines = cli("rule", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "RIGHTS", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [ROOT_RULE, "admin", "sender"]
    assert {line.index(line.split()[1]) for line in lines} == {lines[0].index("RIGHTS")}

    shown = ok_json(cli("rule", "show", "sender", "--json"))
    assert shown == made

    regen = ok_json(cli("rule", "regenerate-key", "sender", "--json"))
    assert regen["primary_key"] != made["primary_key"]
    assert regen["secondary_key"] == made["secondary_key"]
    regen2 = ok_json(cli("rule", "regenerate-key", "sender", "--secondary", "--json"))
    assert regen2["primary_key"] == regen["primary_key"]
    assert regen2["secondary_key"] != made["secondary_key"]
    r = cli("rule", "regenerate-key", "sender")
    assert r.stdout.startswith("regenerated the primary key of rule 'sender' on namespace 'hyrelay'\n")

    assert ok_json(cli("rule", "delete", "sender", "--json")) == {
        "deleted": "rule", "namespace": "hyrelay", "entity": None, "name": "sender"}
    assert cli("rule", "delete", "admin").stdout == "deleted rule 'admin' from namespace 'hyrelay'\n"
    assert [r["name"] for r in ok_json(cli("rule", "list", "--json"))] == [ROOT_RULE]


def test_rule_entity_level_and_duplicate(cli) -> None:
    cli("hc", "create", "orders")
    made = ok_json(cli("rule", "create", "listen", "--rights", "Listen", "--hc", "orders", "--json"))
    assert made["entity"] == "orders"
    # Same name on the namespace is a different rule.
    assert cli("rule", "create", "listen", "--rights", "Send").exit_code == 0
    dup = cli("rule", "create", "listen", "--rights", "Send", "--hc", "orders")
    assert dup.exit_code == 1 and "already exists on hybrid connection 'orders'" in dup.stderr
    assert [r["name"] for r in ok_json(cli("rule", "list", "--hc", "orders", "--json"))] == ["listen"]
    assert cli("rule", "list", "--hc", "orders").stdout.splitlines()[1].split()[:2] == ["listen", "Listen"]
    assert cli("rule", "delete", "listen", "--hc", "orders").exit_code == 0
    assert cli("rule", "list", "--hc", "orders").stdout == "no rules on hybrid connection 'orders'\n"


def test_thirteenth_rule_is_refused(cli) -> None:
    for i in range(MAX_RULES - 1):  # RootManageSharedAccessKey is the first
        assert cli("rule", "create", f"r{i}", "--rights", "Send").exit_code == 0
    r = cli("rule", "create", "one-too-many", "--rights", "Send")
    assert r.exit_code == 1
    assert f"already has {MAX_RULES} rules" in r.stderr and r.stderr.count("\n") == 1


# -- token and connection-string ---------------------------------------------------------------


def test_token_is_signed_with_the_rules_key(cli) -> None:
    cli("hc", "create", "orders")
    rule = ok_json(cli("rule", "create", "l", "--rights", "Listen", "--hc", "orders", "--json"))
    uri = "ws://127.0.0.1:9000/$hc/orders"
    before = int(time.time())
    out = ok_json(cli("token", uri, "--rule", "l", "--hc", "orders", "--ttl", "60", "--json"))
    assert before + 60 <= out["expires_at"] <= int(time.time()) + 60
    assert out["token"] == build_token(uri, "l", rule["primary_key"], out["expires_at"])
    assert out["key_name"] == "l" and out["key_type"] == "primary" and out["uri"] == uri

    text = cli("token", uri, "--rule", "l", "--hc", "orders", "--key-type", "secondary").stdout
    token = parse_token(text.strip())
    assert text.count("\n") == 1 and token.key_name == "l"
    assert text.strip() == build_token(uri, "l", rule["secondary_key"], token.expires_at)
    assert before + 3600 <= token.expires_at <= int(time.time()) + 3600

    # With --hc a namespace rule is found too, as the relay does.
    assert parse_token(cli("token", uri, "--rule", ROOT_RULE, "--hc", "orders").stdout).key_name == ROOT_RULE
    # Without --hc an entity-level rule is not.
    assert cli("token", uri, "--rule", "l").exit_code == 1


def test_connection_string_forms(cli) -> None:
    root = ok_json(cli("rule", "show", ROOT_RULE, "--json"))
    text = cli("connection-string").stdout
    assert text == (f"Endpoint=http://127.0.0.1:9000/;SharedAccessKeyName={ROOT_RULE};"
                    f"SharedAccessKey={root['primary_key']}\n")

    cli("hc", "create", "Orders")
    send = ok_json(cli("rule", "create", "s", "--rights", "Send", "--hc", "orders", "--json"))
    out = ok_json(cli("connection-string", "--rule", "s", "--hc", "orders", "--secondary",
                      "--port", "9100", "--json"))
    cs = parse_connection_string(out["connection_string"])
    assert cs.endpoint == "http://127.0.0.1:9100/" and cs.entity_path == "Orders"
    assert cs.key_name == "s" and cs.key == send["secondary_key"]
    assert out["entity_path"] == "Orders" and out["endpoint"] == cs.endpoint

    cs = parse_connection_string(cli("connection-string", "--endpoint", "https://relay.example:8443").stdout)
    assert cs.endpoint == "sb://relay.example:8443/"
    cs = parse_connection_string(cli("connection-string", env={"HYRELAY_PUBLIC_URL": "https://r.example"}).stdout)
    assert cs.endpoint == "sb://r.example/"
    cs = parse_connection_string(cli("connection-string", env={"HYRELAY_HOST": "10.0.0.5",
                                                               "HYRELAY_PORT": "9500"}).stdout)
    assert cs.endpoint == "http://10.0.0.5:9500/"


def test_data_dir_and_namespace_from_env_and_toml(tmp_path: Path) -> None:
    runner = CliRunner()
    env_dir = tmp_path / "from-env"
    r = runner.invoke(main, ["hc", "create", "x"], env={"HYRELAY_DATA_DIR": str(env_dir)})
    assert r.exit_code == 0
    assert (env_dir / "hyrelay.db").exists()

    cfg = tmp_path / "conf" / "hyrelay.toml"
    cfg.parent.mkdir()
    cfg.write_text('data-dir = "store"\nnamespace = "contoso"\n')
    r = runner.invoke(main, ["hc", "create", "y", "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["namespace"] == "contoso"
    assert (tmp_path / "conf" / "store" / "hyrelay.db").exists()  # relative to the TOML file
    r = runner.invoke(main, ["hc", "list", "--json"], env={"HYRELAY_CONFIG": str(cfg)})
    assert [h["name"] for h in json.loads(r.stdout)] == ["y"]

    r = runner.invoke(main, ["hc", "list", "--config", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    cfg.write_text("prot = 9000\n")
    r = runner.invoke(main, ["hc", "list", "--config", str(cfg)])
    assert r.exit_code == 2 and "unknown key 'prot'" in r.stderr


# -- settings precedence (no sockets) ------------------------------------------------------------


def test_defaults() -> None:
    config = resolve_config({}, {}, {})
    assert (config.host, config.port, config.data_dir) == ("127.0.0.1", 9000, DEFAULT_DATA_DIR)
    assert (config.max_listeners, config.log_level, config.namespace) == (25, "INFO", "hyrelay")
    assert config.public_url is None and config.tls_cert is None and config.tls_key is None
    assert (config.token_grace, config.clock_skew, config.accept_timeout) == (300.0, 300.0, 30.0)


@pytest.mark.parametrize(("flags", "env", "toml", "port"), [
    ({}, {}, {}, 9000),
    ({}, {}, {"port": 9001}, 9001),
    ({}, {"HYRELAY_PORT": "9002"}, {"port": 9001}, 9002),
    ({"port": "9003"}, {"HYRELAY_PORT": "9002"}, {"port": 9001}, 9003),
    ({"port": 9003}, {}, {"port": 9001}, 9003),
    ({"port": None}, {"HYRELAY_PORT": "9002"}, {}, 9002),  # None: flag not given
    ({}, {"HYRELAY_PORT": ""}, {"port": 9001}, 9001),       # empty variable: unset
])
def test_port_precedence(flags: dict, env: dict, toml: dict, port: int) -> None:
    assert resolve_config(flags, env, toml).port == port


def test_each_setting_precedence() -> None:
    toml = {"host": "0.0.0.0", "data-dir": "/t", "max_listeners": 3, "log-level": "debug",
            "token_grace": 1, "clock-skew": 2.5, "accept_timeout": 4, "namespace": "from-toml",
            "public_url": "http://toml.example"}
    env = {"HYRELAY_DATA_DIR": "/e", "HYRELAY_MAX_LISTENERS": "5", "HYRELAY_CLOCK_SKEW": "7",
           "HYRELAY_NAMESPACE": "from-env", "HYRELAY_PUBLIC_URL": "https://env.example/"}
    flags = {"max_listeners": "9", "namespace": "from-flag"}
    config = resolve_config(flags, env, toml)
    assert config.host == "0.0.0.0"                        # toml
    assert config.data_dir == Path("/e")                   # env beats toml
    assert config.max_listeners == 9                       # flag beats env
    assert config.log_level == "DEBUG"                     # normalised
    assert (config.token_grace, config.clock_skew, config.accept_timeout) == (1.0, 7.0, 4.0)
    assert config.namespace == "from-flag"
    assert config.public_url == "https://env.example"      # trailing slash dropped
    assert resolve_config({}, {"HYRELAY_TLS_CERT": "c.pem", "HYRELAY_TLS_KEY": "k.pem"}, {}).secure


@pytest.mark.parametrize(("flags", "env", "toml", "message"), [
    ({"port": "70000"}, {}, {}, "invalid port '70000' (from --port): must be between 0 and 65535"),
    ({}, {"HYRELAY_PORT": "http"}, {}, "(from HYRELAY_PORT): must be an integer"),
    ({}, {}, {"port": True}, "(from config key 'port'): must be an integer"),
    ({}, {}, {"port": -1}, "must be between 0 and 65535"),
    ({"max_listeners": "0"}, {}, {}, "must be at least 1"),
    ({"log_level": "LOUD"}, {}, {}, "use one of DEBUG"),
    ({"accept_timeout": "0"}, {}, {}, "must be greater than 0"),
    ({"clock_skew": "-1"}, {}, {}, "must not be negative"),
    ({"token_grace": "nan"}, {}, {}, "finite"),
    ({"public_url": "relay.example"}, {}, {}, "http:// or https://"),
    ({"public_url": "http://relay.example/path"}, {}, {}, "no path"),
    ({"namespace": "x"}, {}, {}, "invalid namespace"),
    ({"host": " "}, {}, {}, "must not be empty"),
    ({"tls_cert": "c.pem"}, {}, {}, "tls-cert (from --tls-cert) needs tls-key"),
    ({}, {"HYRELAY_TLS_KEY": "k.pem"}, {}, "tls-key (from HYRELAY_TLS_KEY) needs tls-cert"),
    ({}, {}, {"prot": 1}, "unknown config key 'prot'"),
])
def test_invalid_settings(flags: dict, env: dict, toml: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(flags, env, toml)
    assert message in str(info.value)


def test_load_toml(tmp_path: Path) -> None:
    path = tmp_path / "hyrelay.toml"
    path.write_text('PORT = 9001\ndata-dir = "d"\ntls_cert = "/abs/c.pem"\nhost = "h"\n')
    assert load_toml(path) == {"port": 9001, "data_dir": str(tmp_path / "d"),
                               "tls_cert": "/abs/c.pem", "host": "h"}
    path.write_text("port = 1\nPort = 2\n")
    with pytest.raises(ConfigError, match="twice"):
        load_toml(path)
    path.write_text("[serve]\nport = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'serve'"):
        load_toml(path)
    path.write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)


def test_serve_rejects_bad_settings_before_starting(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["serve", "--port", "99999", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "between 0 and 65535" in r.stderr and r.stdout == ""
    r = runner.invoke(main, ["serve", "--tls-cert", str(tmp_path / "c.pem"),
                             "--tls-key", str(tmp_path / "k.pem"), "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "is not a file" in r.stderr


def test_unusable_data_dir_exits_1(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = CliRunner().invoke(main, ["hc", "list", "--data-dir", str(not_a_dir)])
    assert r.exit_code == 1 and r.stderr.startswith("Error: cannot open the store in ")
    assert r.stderr.count("\n") == 1


# -- a real `hyrelay serve` process -------------------------------------------------------------

LINE_RE = re.compile(r"^hyrelay listening on (?P<url>http://\S+) namespace=(?P<ns>\S+) "
                     r"connection string: (?P<cs>Endpoint=\S+)$")


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HYRELAY_")}


def _hyrelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyrelay", *args], capture_output=True, text=True,
                          timeout=30, env=_clean_environ())


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """First stdout line of proc, with a hang guard."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"hyrelay serve printed nothing within {timeout} s")


@pytest.fixture
def serve_process(tmp_path: Path):
    data = tmp_path / "relay-data"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyrelay", "serve", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=_clean_environ(),
    )
    try:
        yield proc, data
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=HANG_GUARD)
        proc.stdout.close()
        log.close()


async def test_serve_process_picks_up_cli_changes(serve_process, tmp_path: Path) -> None:
    proc, data = serve_process
    line = _read_line(proc, 20)
    assert line.endswith("\n")
    match = LINE_RE.match(line.rstrip("\n"))
    assert match, line
    base = match["url"]
    port = int(base.rsplit(":", 1)[1])
    assert port != 0 and match["ns"] == "hyrelay"
    cs = parse_connection_string(match["cs"])
    assert cs.endpoint == f"http://127.0.0.1:{port}/" and cs.key_name == ROOT_RULE

    with urllib.request.urlopen(f"{base}/$health", timeout=HANG_GUARD) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["status"] == "ok"

    created = await asyncio.to_thread(_hyrelay, "hc", "create", "live", "--data-dir", str(data))
    assert created.returncode == 0, created.stderr

    uri = f"ws://127.0.0.1:{port}/$hc/live"
    token = build_token(uri, cs.key_name, cs.key, int(time.time()) + 3600)

    async def listen():
        while True:  # the relay reloads the store about once a second
            try:
                return await connect(f"{uri}?sb-hc-action=listen",
                                     additional_headers={"ServiceBusAuthorization": token})
            except InvalidStatus as exc:
                assert exc.response.status_code == 404, exc
                await asyncio.sleep(0.1)

    ws = await asyncio.wait_for(listen(), HANG_GUARD)
    try:
        deleted = await asyncio.to_thread(_hyrelay, "hc", "delete", "live", "--data-dir", str(data))
        assert deleted.returncode == 0, deleted.stderr
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), HANG_GUARD)
        assert ws.close_code == 1001
        assert "deleted" in (ws.close_reason or "")
    finally:
        await ws.close()

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, HANG_GUARD) == 0


def test_serve_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _hyrelay("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1 and done.stdout == ""
    assert f"Error: cannot listen on 127.0.0.1:{port}: " in done.stderr
