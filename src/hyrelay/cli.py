"""The ``hyrelay`` command: run the relay and manage its hybrid connections and rules.

Thin by design: settings come from :mod:`hyrelay.settings`, data from :mod:`hyrelay.store`,
tokens and connection strings from :mod:`hyrelay.protocol.sas`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import os
import re
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from . import __version__
from .protocol.sas import ConnectionString, build_token
from .server.app import RelayServer
from .server.config import RelayConfig
from .settings import (
    CONFIG_ENV, ENV_PREFIX, SETTINGS, ConfigError, check_files, default_of, env_name, load_toml,
    resolve_config,
)
from .store import ROOT_RULE, HybridConnection, NotFound, Rule, SqliteStore, StoreError, open_store

if TYPE_CHECKING:
    from .client.admin import AdminClient

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("hyrelay.cli")

SERVE_SETTINGS = (
    "host", "port", "data_dir", "public_url", "tls_cert", "tls_key", "max_listeners",
    "log_level", "namespace", "token_grace", "clock_skew", "accept_timeout", "request_timeout",
    "max_request_body",
)
STORE_SETTINGS = ("data_dir", "namespace")

CONFIG_HELP = f"""\b
Settings come from, highest precedence first: command-line flags, environment variables
(HYRELAY_ plus the flag name in capitals with underscores, e.g. HYRELAY_PORT,
HYRELAY_DATA_DIR), the TOML file given by --config or {CONFIG_ENV}, and built-in defaults.
The TOML file holds settings as top-level keys spelled like the flags, with dashes or
underscores; relative paths in it are relative to the file:

\b
    host = "0.0.0.0"
    port = 9001
    data_dir = "/var/lib/hyrelay"
    max-listeners = 50
"""


class UsageProblem(click.ClickException):
    """A bad setting or argument: one line on stderr, exit code 2."""

    exit_code = 2


# -- shared options ----------------------------------------------------------------------------


def _setting_options(names: Sequence[str]) -> Callable[[F], F]:
    """Add one option per setting, plus --config; values stay None unless given."""

    def decorate(func: F) -> F:
        func = click.option(
            "--config", "config", metavar="PATH", default=None,
            help=f"TOML settings file (top-level keys). [env {CONFIG_ENV}]",
        )(func)
        for name in reversed(names):
            setting = SETTINGS[name]
            default = default_of(name)
            shown = "" if default is None else f"; default {default}"
            func = click.option(
                setting.flag, name, default=None, metavar=_metavar(name),
                help=f"{setting.help} [env {env_name(name)}{shown}]",
            )(func)
        return func

    return decorate


def _metavar(name: str) -> str:
    if name in ("port", "max_listeners", "max_request_body"):
        return "INT"
    if name in ("token_grace", "clock_skew", "accept_timeout", "request_timeout"):
        return "SECONDS"
    if name in ("data_dir", "tls_cert", "tls_key"):
        return "PATH"
    if name == "public_url":
        return "URL"
    return "TEXT"


def _resolve(params: dict[str, Any]) -> RelayConfig:
    """Pop the setting options out of params and resolve them with env and TOML."""
    flags = {name: params.pop(name) for name in list(params) if name in SETTINGS}
    config_path = params.pop("config", None) or os.environ.get(CONFIG_ENV, "").strip() or None
    try:
        toml = load_toml(config_path) if config_path else {}
        return resolve_config(flags, os.environ, toml)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None


@dataclass(slots=True)
class Session:
    """What a data command works with: the settings, a store and the output mode.

    With --server the store is an AdminClient: the same methods, carried out by the relay.
    """

    config: RelayConfig
    store: SqliteStore | AdminClient
    as_json: bool
    remote: AdminClient | None = None

    @property
    def namespace(self) -> str:
        # With --server the relay decides: it acts on the namespace it serves.
        return self.remote.namespace if self.remote is not None else self.config.namespace


def _store_command(extra: Sequence[str] = (), *,
                   remote: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command --data-dir, --namespace, --config and --json, and a Session to work on.

    With *remote*, also --server and --connection-string: the command then acts through a running
    relay's admin API instead of the local store. Store errors (not found, already exists, invalid
    name, limit), and the relay's refusals, end the command with their message on stderr and exit
    code 1.
    """

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(func)
        def wrapper(**params: Any) -> None:
            as_json = params.pop("as_json")
            client = _admin_client(params.pop("server", None), params.pop("connection_string", None),
                                   params) if remote else None
            config = _resolve(params)
            if client is not None:
                try:
                    func(Session(config, client, as_json, client), **params)
                except StoreError as exc:
                    raise click.ClickException(str(exc)) from None
                return
            store = _open_store(config)
            try:
                store.ensure_default(config.namespace)
                func(Session(config, store, as_json), **params)
            except StoreError as exc:
                raise click.ClickException(str(exc)) from None
            finally:
                store.close()

        wrapper = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(wrapper)
        if remote:
            wrapper = click.option(
                "--connection-string", "connection_string", metavar="TEXT", default=None,
                envvar=f"{ENV_PREFIX}CONNECTION_STRING",
                help=f"With --server: connection string of a namespace rule with Manage. "
                     f"[env {ENV_PREFIX}CONNECTION_STRING]")(wrapper)
            wrapper = click.option(
                "--server", metavar="URL", default=None, envvar=f"{ENV_PREFIX}SERVER",
                help=f"Act through the admin API of the relay at URL (e.g. http://127.0.0.1:9000) "
                     f"instead of the local data dir. [env {ENV_PREFIX}SERVER]")(wrapper)
        return _setting_options((*STORE_SETTINGS, *extra))(wrapper)

    return decorate


def _admin_client(server: str | None, connection_string: str | None,
                  params: dict[str, Any]) -> AdminClient | None:
    """The admin API client for --server, or None for local mode; bad combinations exit 2."""
    if not server:
        source = click.get_current_context().get_parameter_source("connection_string")
        if source is click.core.ParameterSource.COMMANDLINE:
            raise UsageProblem("--connection-string needs --server URL, the relay to act through")
        return None
    if params.get("namespace") is not None:
        raise UsageProblem("--namespace does not apply with --server: the relay acts on the namespace it serves")
    if not connection_string:
        raise UsageProblem(f"--server needs the connection string of a rule with Manage: give "
                           f"--connection-string or {ENV_PREFIX}CONNECTION_STRING")
    from .client.admin import AdminClient

    try:
        return AdminClient(server, connection_string)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _open_store(config: RelayConfig) -> SqliteStore:
    """Open the store in the data dir, or fail with one clear line (exit 1)."""
    try:
        return open_store(config.data_dir)
    except (StoreError, OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise click.ClickException(f"cannot open the store in {str(config.data_dir)!r}: {reason}") from None


# -- output ------------------------------------------------------------------------------------


def _emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    rows = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """``key:  value`` lines with the values aligned."""
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}" for k, v in pairs)


def _oneline(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hc_json(hc: HybridConnection) -> dict[str, object]:
    return asdict(hc)


def _rule_json(rule: Rule, *, keys: bool = True) -> dict[str, object]:
    data = asdict(rule)
    data["rights"] = list(rule.rights)
    if not keys:
        del data["primary_key"], data["secondary_key"]
    return data


def _where(session: Session, hc: str | None) -> str:
    return f"namespace {session.namespace!r}" if hc is None else f"hybrid connection {hc!r}"


# -- the group ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=CONFIG_HELP)
@click.version_option(__version__, prog_name="hyrelay")
def main() -> None:
    """Self-hosted relay, wire-compatible with Azure Relay Hybrid Connections.

    Run the relay with `hyrelay serve`; manage hybrid connections and SAS rules with
    `hyrelay hc` and `hyrelay rule` (also while the relay runs: it picks up changes within
    about a second). Every command accepts --data-dir and --config, and --json where it
    prints data. The hc, rule and namespace commands can also act through a running relay's
    admin API: give --server URL and a connection string with Manage.
    """


# -- serve -------------------------------------------------------------------------------------


@main.command(epilog=CONFIG_HELP)
@_setting_options(SERVE_SETTINGS)
def serve(**params: Any) -> None:
    """Run the relay until SIGINT or SIGTERM.

    On start it prints one line to stdout, ending with the root connection string:

    \b
    hyrelay listening on URL namespace=NAME connection string: Endpoint=...

    Logs go to stderr.
    """
    config = _resolve(params)
    try:
        check_files(config)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    logging.basicConfig(
        level=getattr(logging, config.log_level), force=True,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    store = _open_store(config)
    try:
        _run(_serve(config, store))
    except OSError as exc:
        where = f"{config.host}:{config.port}"
        raise click.ClickException(f"cannot listen on {where}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise click.ClickException(f"cannot load the TLS certificate or key: {exc}") from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run coro on uvloop where available, else on the default loop."""
    try:
        import uvloop
    except ImportError:  # Windows
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so a long-running command can stop cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, AttributeError):  # Windows: Ctrl+C only
            pass
    return stop


async def _serve(config: RelayConfig, store: SqliteStore) -> None:
    stop = _stop_on_signals()
    server = RelayServer(config, store)
    await server.start()
    try:
        click.echo(
            f"hyrelay listening on {server.base_url} namespace={config.namespace} "
            f"connection string: {server.connection_string()}"
        )
        sys.stdout.flush()
        await stop.wait()
        _log.info("event=relay_stopping")
    finally:
        await server.stop()
    _log.info("event=relay_stopped")


# -- hc ----------------------------------------------------------------------------------------


@main.group()
def hc() -> None:
    """Create, list, show, update and delete hybrid connections."""


class _Reset:
    """The word ``default`` for a per-HC setting: use the relay's own setting."""

    def __repr__(self) -> str:
        return "default"


RESET = _Reset()


class _NumberOrDefault(click.ParamType):
    """A number (int or float), or ``default``, which becomes :data:`RESET`."""

    def __init__(self, kind: type[int] | type[float], what: str) -> None:
        self.kind = kind
        self.what = what
        self.name = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is RESET or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return value
        text = str(value).strip()
        if text.lower() == "default":
            return RESET
        try:
            number = self.kind(text)
        except ValueError:
            number = None
        if number is None or number != number or abs(number) == float("inf"):
            self.fail(f"{value!r} is not {self.what} or 'default'", param, ctx)
        return number


# Destinations differ from the flags: request_timeout and max_listeners are relay settings too,
# which _resolve would take for itself.
_request_timeout_option = click.option(
    "--request-timeout", "hc_request_timeout", type=_NumberOrDefault(float, "a number of seconds"), default=None,
    metavar="SECONDS", help="Seconds a listener has to answer a relayed HTTP request; 0: no limit; "
                            "'default': the relay's request-timeout.")
_max_listeners_option = click.option(
    "--max-listeners", "hc_max_listeners", type=_NumberOrDefault(int, "a whole number"), default=None, metavar="N",
    help="Listeners allowed at once (1-10000); 'default': the relay's max-listeners.")


def _per_hc(value: Any) -> Any:
    return None if value is RESET else value


@hc.command("create")
@click.argument("name")
@click.option("--no-client-auth", is_flag=True,
              help="Let senders connect without a token (requiresClientAuthorization=false).")
@click.option("--user-metadata", metavar="TEXT", default="", help="Free text stored with the HC.")
@_request_timeout_option
@_max_listeners_option
@click.option("--multicast/--no-multicast", default=False,
              help="Deliver each request to every listener instead of one.  [default: no-multicast]")
@_store_command(remote=True)
def hc_create(s: Session, name: str, no_client_auth: bool, user_metadata: str, hc_request_timeout: Any,
              hc_max_listeners: Any, multicast: bool) -> None:
    """Create the hybrid connection NAME."""
    made = s.store.create_hc(s.namespace, name, requires_client_authorization=not no_client_auth,
                             user_metadata=user_metadata, request_timeout=_per_hc(hc_request_timeout),
                             max_listeners=_per_hc(hc_max_listeners), multicast=multicast)
    if s.as_json:
        return _emit_json(_hc_json(made))
    auth = "required" if made.requires_client_authorization else "not required"
    click.echo(f"created hybrid connection {made.name!r} in namespace {made.namespace!r} "
               f"(client authorization {auth})")


@hc.command("update")
@click.argument("name")
@click.option("--client-auth/--no-client-auth", default=None,
              help="Require senders to bring a Send token, or not.")
@click.option("--user-metadata", metavar="TEXT", default=None, help="Replace the free text stored with the HC.")
@_request_timeout_option
@_max_listeners_option
@click.option("--multicast/--no-multicast", default=None,
              help="Deliver each request to every listener, or to one.")
@_store_command(remote=True)
def hc_update(s: Session, name: str, client_auth: bool | None, user_metadata: str | None,
              hc_request_timeout: Any, hc_max_listeners: Any, multicast: bool | None) -> None:
    """Change settings of the hybrid connection NAME; what is not given stays as it is."""
    changes: dict[str, Any] = {}
    if client_auth is not None:
        changes["requires_client_authorization"] = client_auth
    if user_metadata is not None:
        changes["user_metadata"] = user_metadata
    if hc_request_timeout is not None:
        changes["request_timeout"] = _per_hc(hc_request_timeout)
    if hc_max_listeners is not None:
        changes["max_listeners"] = _per_hc(hc_max_listeners)
    if multicast is not None:
        changes["multicast"] = multicast
    if not changes:
        raise UsageProblem("nothing to change: give --client-auth/--no-client-auth, --user-metadata, "
                           "--request-timeout, --max-listeners or --multicast/--no-multicast")
    h = s.store.update_hc(s.namespace, name, **changes)
    if s.as_json:
        return _emit_json(_hc_json(h))
    click.echo(f"updated hybrid connection {h.name!r} in namespace {h.namespace!r}")
    click.echo(_pairs(_hc_pairs(h)))


@hc.command("list")
@_store_command(remote=True)
def hc_list(s: Session) -> None:
    """List the hybrid connections of the namespace."""
    hcs = s.store.list_hcs(s.namespace)
    if s.as_json:
        return _emit_json([_hc_json(h) for h in hcs])
    if not hcs:
        click.echo(f"no hybrid connections in namespace {s.namespace!r}")
        return
    click.echo(_table(
        ("NAME", "CLIENT AUTH", "CREATED", "USER METADATA"),
        ((h.name, "required" if h.requires_client_authorization else "none", h.created_at,
          _oneline(h.user_metadata)) for h in hcs),
    ))


def _hc_pairs(h: HybridConnection) -> list[tuple[str, str]]:
    if h.request_timeout is None:
        timeout = "relay default"
    else:
        timeout = "no limit" if h.request_timeout == 0 else f"{h.request_timeout:g} s"
    return [
        ("name", h.name), ("namespace", h.namespace),
        ("client authorization", "required" if h.requires_client_authorization else "not required"),
        ("user metadata", h.user_metadata or "-"), ("created", h.created_at), ("updated", h.updated_at),
        ("request timeout", timeout),
        ("max listeners", "relay default" if h.max_listeners is None else str(h.max_listeners)),
        ("multicast", "on" if h.multicast else "off"),
    ]


@hc.command("show")
@click.argument("name")
@_store_command(remote=True)
def hc_show(s: Session, name: str) -> None:
    """Show the hybrid connection NAME."""
    h = s.store.get_hc(s.namespace, name)
    if s.as_json:
        return _emit_json(_hc_json(h))
    click.echo(_pairs(_hc_pairs(h)))


@hc.command("delete")
@click.argument("name")
@_store_command(remote=True)
def hc_delete(s: Session, name: str) -> None:
    """Delete the hybrid connection NAME and its rules; a running relay closes its listeners."""
    h = s.store.get_hc(s.namespace, name)
    s.store.delete_hc(s.namespace, h.name)
    if s.as_json:
        return _emit_json({"deleted": "hybrid_connection", "namespace": h.namespace, "name": h.name})
    click.echo(f"deleted hybrid connection {h.name!r} from namespace {h.namespace!r}")


# -- rule --------------------------------------------------------------------------------------

_hc_option = click.option("--hc", "hc_name", metavar="HCNAME", default=None,
                          help="Act on this hybrid connection's rules instead of the namespace's.")


@main.group()
def rule() -> None:
    """Manage SAS authorization rules (namespace level, or with --hc on one HC)."""


def _print_rule_keys(r: Rule) -> None:
    click.echo(_pairs([("rights", ", ".join(r.rights)), ("primary key", r.primary_key),
                       ("secondary key", r.secondary_key)]))


@rule.command("create")
@click.argument("name")
@click.option("--rights", required=True, metavar="LIST",
              help="Comma-separated rights: Listen, Send, Manage (e.g. Listen,Send).")
@_hc_option
@_store_command(remote=True)
def rule_create(s: Session, name: str, rights: str, hc_name: str | None) -> None:
    """Create the rule NAME with fresh keys."""
    r = s.store.create_rule(s.namespace, hc_name, name, rights)
    if s.as_json:
        return _emit_json(_rule_json(r))
    click.echo(f"created rule {r.name!r} on {_where(s, r.entity)}")
    _print_rule_keys(r)


@rule.command("list")
@_hc_option
@_store_command(remote=True)
def rule_list(s: Session, hc_name: str | None) -> None:
    """List rules (without their keys; see `rule show`)."""
    rules = s.store.list_rules(s.namespace, hc_name)
    if s.as_json:
        return _emit_json([_rule_json(r, keys=False) for r in rules])
    if not rules:
        click.echo(f"no rules on {_where(s, hc_name)}")
        return
    click.echo(_table(("NAME", "RIGHTS", "CREATED"),
                      ((r.name, ",".join(r.rights), r.created_at) for r in rules)))


@rule.command("show")
@click.argument("name")
@_hc_option
@_store_command(remote=True)
def rule_show(s: Session, name: str, hc_name: str | None) -> None:
    """Show the rule NAME with its keys."""
    r = s.store.get_rule(s.namespace, hc_name, name)
    if s.as_json:
        return _emit_json(_rule_json(r))
    click.echo(f"rule {r.name!r} on {_where(s, r.entity)}")
    _print_rule_keys(r)


@rule.command("delete")
@click.argument("name")
@_hc_option
@_store_command(remote=True)
def rule_delete(s: Session, name: str, hc_name: str | None) -> None:
    """Delete the rule NAME; tokens signed with its keys stop working."""
    r = s.store.get_rule(s.namespace, hc_name, name)
    s.store.delete_rule(s.namespace, r.entity, r.name)
    if s.as_json:
        return _emit_json({"deleted": "rule", "namespace": r.namespace, "entity": r.entity,
                           "name": r.name})
    click.echo(f"deleted rule {r.name!r} from {_where(s, r.entity)}")


@rule.command("regenerate-key")
@click.argument("name")
@_hc_option
@click.option("--secondary", is_flag=True, help="Replace the secondary key instead of the primary.")
@_store_command(remote=True)
def rule_regenerate_key(s: Session, name: str, hc_name: str | None, secondary: bool) -> None:
    """Replace a key of the rule NAME with a fresh one."""
    which = "secondary" if secondary else "primary"
    r = s.store.regenerate_key(s.namespace, hc_name, name, which)
    if s.as_json:
        return _emit_json(_rule_json(r))
    click.echo(f"regenerated the {which} key of rule {r.name!r} on {_where(s, r.entity)}")
    _print_rule_keys(r)


def _find_rule(s: Session, name: str, hc_name: str | None) -> Rule:
    """The rule on the HC, else on the namespace (as the relay looks keys up)."""
    if hc_name is None:
        return s.store.get_rule(s.namespace, None, name)
    s.store.get_hc(s.namespace, hc_name)
    for entity in (hc_name, None):
        try:
            return s.store.get_rule(s.namespace, entity, name)
        except NotFound:
            pass
    raise NotFound(f"rule {name!r} does not exist on hybrid connection {hc_name!r} "
                   f"or namespace {s.namespace!r}")


# -- namespace ---------------------------------------------------------------------------------


@main.group("namespace")
def namespace_group() -> None:
    """List, create and delete namespaces (the relay serves one: the namespace setting)."""


@namespace_group.command("list")
@_store_command(remote=True)
def namespace_list(s: Session) -> None:
    """List the namespaces; CURRENT marks the one the other commands act on."""
    spaces = s.store.list_namespaces()
    current = s.namespace.lower()
    if s.as_json:
        return _emit_json([{**asdict(n), "current": n.name.lower() == current} for n in spaces])
    click.echo(_table(("NAME", "CREATED", "CURRENT"),
                      ((n.name, n.created_at, "yes" if n.name.lower() == current else "") for n in spaces)))


@namespace_group.command("create")
@click.argument("name")
@_store_command(remote=True)
def namespace_create(s: Session, name: str) -> None:
    """Create the namespace NAME with a RootManageSharedAccessKey rule."""
    made = s.store.create_namespace(name)
    if s.as_json:
        return _emit_json(asdict(made))
    click.echo(f"created namespace {made.name!r} with rule {ROOT_RULE!r}")


@namespace_group.command("delete")
@click.argument("name")
@_store_command(remote=True)
def namespace_delete(s: Session, name: str) -> None:
    """Delete the namespace NAME with its hybrid connections and rules."""
    ns = s.store.get_namespace(name)
    # A relay refuses this itself (409); locally the namespace setting stands in for the served one.
    if s.remote is None and ns.name.lower() == s.namespace.lower():
        raise click.ClickException(f"namespace {ns.name!r} is the one the relay serves (the namespace "
                                   "setting); give --namespace OTHER to delete it")
    s.store.delete_namespace(ns.name)
    if s.as_json:
        return _emit_json({"deleted": "namespace", "name": ns.name})
    click.echo(f"deleted namespace {ns.name!r} with its hybrid connections and rules")


# -- token and connection-string ---------------------------------------------------------------


@main.command()
@click.argument("uri")
@click.option("--rule", "rule_name", required=True, metavar="NAME", help="Rule whose key signs.")
@click.option("--hc", "hc_name", metavar="HCNAME", default=None,
              help="Look the rule up on this HC first, then on the namespace.")
@click.option("--key-type", type=click.Choice(["primary", "secondary"]), default="primary",
              show_default=True, help="Which of the rule's keys signs.")
@click.option("--ttl", type=click.IntRange(min=1), default=3600, show_default=True,
              metavar="SECONDS", help="Seconds until the token expires.")
@_store_command()
def token(s: Session, uri: str, rule_name: str, hc_name: str | None, key_type: str, ttl: int) -> None:
    """Print a SAS token for URI, e.g. ws://127.0.0.1:9000/$hc/myhc."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        raise click.BadParameter("give a full URI such as ws://127.0.0.1:9000/$hc/myhc",
                                 param_hint="'URI'")
    r = _find_rule(s, rule_name, hc_name)
    expires_at = int(time.time()) + ttl
    key = r.primary_key if key_type == "primary" else r.secondary_key
    text = build_token(uri, r.name, key, expires_at)
    if s.as_json:
        return _emit_json({"token": text, "uri": uri, "key_name": r.name, "key_type": key_type,
                           "expires_at": expires_at})
    click.echo(text)


def _endpoint(url: str) -> str:
    """Azure-form endpoint for a relay URL: ``sb://host:port/`` if TLS, else ``http://host:port/``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not parts.netloc or scheme not in ("http", "https", "ws", "wss", "sb"):
        raise click.BadParameter("give a URL such as http://127.0.0.1:9000 or sb://relay.example.com",
                                 param_hint="'--endpoint'")
    return f"{'sb' if scheme in ('sb', 'https', 'wss') else 'http'}://{parts.netloc}/"


@main.command("connection-string")
@click.option("--rule", "rule_name", metavar="NAME", default=ROOT_RULE, show_default=True,
              help="Rule whose key goes in the string.")
@click.option("--hc", "hc_name", metavar="HCNAME", default=None,
              help="Add EntityPath=HCNAME; the rule is looked up on it first, then on the namespace.")
@click.option("--secondary", is_flag=True, help="Use the rule's secondary key.")
@click.option("--endpoint", metavar="URL", default=None,
              help="Relay address clients use; default: public-url, else host:port of the serve "
                   "settings (sb:// when TLS is configured).")
@_store_command(extra=("host", "port", "public_url"))
def connection_string(s: Session, rule_name: str, hc_name: str | None, secondary: bool,
                      endpoint: str | None) -> None:
    """Print an Azure-form connection string for a rule."""
    url = endpoint or RelayServer(s.config).base_url
    r = _find_rule(s, rule_name, hc_name)
    entity = s.store.get_hc(s.namespace, hc_name).name if hc_name else None
    cs = ConnectionString(_endpoint(url), r.name, r.secondary_key if secondary else r.primary_key,
                          entity)
    if s.as_json:
        return _emit_json({"connection_string": str(cs), "endpoint": cs.endpoint, "key_name": r.name,
                           "entity_path": entity})
    click.echo(str(cs))


# -- expose ------------------------------------------------------------------------------------

_APP_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _classify(args: Sequence[str]) -> tuple[str | None, str | None]:
    """Sort expose's positional arguments into (APP, CONNECTION_STRING)."""
    from .client._endpoint import is_connection_string

    app = cs = None
    for arg in args:
        if is_connection_string(arg) and cs is None:
            cs = arg
        elif _APP_SPEC.fullmatch(arg) and app is None:
            app = arg
        else:
            raise UsageProblem(f"{arg!r} is neither a connection string (Endpoint=...) nor an ASGI app "
                               f"(module:attribute), or it was given twice")
    return app, cs


def _import_app(spec: str) -> Any:
    """Import ``module:attr`` (attr may be dotted) with the current directory on sys.path."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise UsageProblem(f"cannot import the ASGI app {spec!r}: {exc}") from None
    if not callable(target):
        raise UsageProblem(f"{spec!r} is not an ASGI app (not callable)")
    return target


@main.command("expose")
@click.argument("args", nargs=-1, metavar="[APP] [CONNECTION_STRING]")
@click.option("--to", "to", metavar="URL", default=None,
              help="Forward every request to this local HTTP service, e.g. http://127.0.0.1:8000.")
@click.option("--connection-string", "cs_option", metavar="TEXT", default=None,
              envvar="HYRELAY_CONNECTION_STRING", show_envvar=True,
              help="Connection string with Listen rights (or give it as an argument).")
@click.option("--hc", "hc_name", metavar="HCNAME", default=None,
              help="Hybrid connection to listen on, when the connection string has no EntityPath.")
@click.option("--listeners", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Parallel listeners on the hybrid connection; the relay spreads requests over them.")
@click.option("--flush-interval", type=click.FloatRange(min=0), default=2.0, show_default=True,
              metavar="SECONDS",
              help="A response still buffered this long after its first bytes starts streaming.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="Logging to stderr.")
def expose(args: tuple[str, ...], to: str | None, cs_option: str | None, hc_name: str | None,
           listeners: int, flush_interval: float, log_level: str) -> None:
    """Make a local HTTP service or an ASGI app reachable through the relay.

    \b
        hyrelay expose --to http://127.0.0.1:8000 "Endpoint=...;EntityPath=web"
        hyrelay expose myapp:app --connection-string "Endpoint=..." --hc web

    Once the listeners are online it prints the public URL (http://relay/HCNAME/) as one line on
    stdout, then serves until SIGINT or SIGTERM. Logs go to stderr.
    """
    app_spec, cs_arg = _classify(args)
    # An argument beats HYRELAY_CONNECTION_STRING; an argument and a different flag conflict.
    flagged = click.get_current_context().get_parameter_source("cs_option") is ParameterSource.COMMANDLINE
    if cs_arg and cs_option and flagged and cs_arg != cs_option:
        raise UsageProblem("two different connection strings were given")
    cs = cs_arg or cs_option
    if not cs:
        raise UsageProblem("give a connection string: as an argument, with --connection-string "
                           "or in HYRELAY_CONNECTION_STRING")
    if (to is None) == (app_spec is None):
        raise UsageProblem("give either --to URL (a local HTTP service) or APP (module:attribute), not both")
    logging.basicConfig(level=getattr(logging, log_level.upper()), force=True, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from .client.asgi import AsgiHandler
    from .client.proxy import ProxyHandler

    handler: Any
    if to is not None:
        try:
            handler = ProxyHandler(to)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    else:
        handler = AsgiHandler(_import_app(app_spec or ""))
    _run(_expose(cs, hc_name, handler, listeners, flush_interval, to or app_spec or ""))


async def _expose(cs: str, hc_name: str | None, handler: Any, count: int, flush_interval: float,
                  what: str) -> None:
    from .client import HybridConnectionListener, RelayError

    stop = _stop_on_signals()
    try:
        made = [HybridConnectionListener(cs, entity=hc_name, request_handler=handler,
                                         response_flush_interval=flush_interval) for _ in range(count)]
    except (RelayError, ValueError) as exc:
        raise UsageProblem(str(exc)) from None
    async with handler:  # the proxy's HTTP session, or the app's lifespan
        opened = []
        try:
            for listener in made:
                try:
                    await listener.open()
                except RelayError as exc:
                    raise click.ClickException(f"the relay refused the listener: {exc}") from None
                except (OSError, TimeoutError) as exc:
                    raise click.ClickException(
                        f"cannot reach the relay at {listener.endpoint.ws_base}: {exc}") from None
                opened.append(listener)
            endpoint = made[0].endpoint
            public = re.sub(r"^ws", "http", endpoint.ws_base, count=1)
            click.echo(f"{public}/{endpoint.raw_path}/")
            sys.stdout.flush()
            _log.info("event=expose_online hc=%s listeners=%d to=%s", endpoint.entity, count, what)
            await stop.wait()
            _log.info("event=expose_stopping")
        finally:
            await asyncio.gather(*(listener.close() for listener in opened), return_exceptions=True)
    _log.info("event=expose_stopped")


from .rpc.cli import rpc as _rpc_group; main.add_command(_rpc_group)  # noqa: E402,E702  `hyrelay rpc ...`

if __name__ == "__main__":  # pragma: no cover
    main()
