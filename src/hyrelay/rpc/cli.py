"""``hyrelay rpc ...``: call a JSON-RPC service behind a hybrid connection, describe it, publish events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import click
from msgspec import UNSET

from .client import Client, connect
from .errors import RemoteError
from .events import publish as publish_event

__all__ = ["rpc"]

T = TypeVar("T")


class CallFailed(click.ClickException):
    """The call failed: its error on stderr, exit code 1."""

    exit_code = 1

    def format_message(self) -> str:
        return self.message


def _params(text: str | None) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="'PARAMS'") from None
    if not isinstance(value, (list, dict)):
        raise click.BadParameter("give a JSON array (positional) or object (named)", param_hint="'PARAMS'")
    return value


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except RemoteError as err:
        detail = f"\ndata: {json.dumps(err.data, ensure_ascii=False)}" if err.data is not None else ""
        raise CallFailed(f"error {err.code}: {err.message}{detail}") from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


_entity = click.option("--entity", "-e", metavar="HC", default=None,
                       help="The hybrid connection, when the connection string has no EntityPath.")


@click.group()
def rpc() -> None:
    """Call JSON-RPC services behind hybrid connections (see docs/rpc.md)."""


@rpc.command()
@click.argument("connection_string")
@click.argument("method")
@click.argument("params", required=False)
@_entity
@click.option("--timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="Give up (and cancel the call) after this long.")
@click.option("--notify", is_flag=True, help="Send a notification: no answer, nothing printed.")
def call(connection_string: str, method: str, params: str | None, entity: str | None, timeout: float,
         notify: bool) -> None:
    """Call METHOD with PARAMS, a JSON array (positional) or object (named); print the JSON result.

    \b
    hyrelay rpc call "$CS" add '[1, 2]'
    hyrelay rpc call "$CS" add '{"a": 1, "b": 2}' --entity calc
    """
    value = _params(params)

    async def run() -> Any:
        async with connect(connection_string, entity=entity, reconnect=False) as client:
            assert isinstance(client, Client)
            if notify:
                args = value if isinstance(value, list) else []
                kwargs = value if isinstance(value, dict) else {}
                await client.notify(method, *args, **kwargs)
                return None
            return await client.call_with(method, value if value is not None else UNSET, timeout=timeout)

    result = _run(run())
    if not notify:
        _echo_json(result)


@rpc.command()
@click.argument("connection_string")
@_entity
@click.option("--timeout", type=float, default=30.0, show_default=True, metavar="SECONDS")
def describe(connection_string: str, entity: str | None, timeout: float) -> None:
    """Print the service's OpenRPC document (its methods, parameters, results and events)."""

    async def run() -> Any:
        async with connect(connection_string, entity=entity, reconnect=False, deadline=timeout) as client:
            return await client.discover()

    _echo_json(_run(run()))


@rpc.command()
@click.argument("connection_string")
@click.argument("event")
@click.argument("params", required=False)
@_entity
def publish(connection_string: str, event: str, params: str | None, entity: str | None) -> None:
    """Publish EVENT with PARAMS to every listener of a multicast hybrid connection; print how many."""
    value = _params(params)
    args = value if isinstance(value, list) else []
    kwargs = value if isinstance(value, dict) else {}
    reached = _run(publish_event(connection_string, event, *args, entity=entity, **kwargs))
    click.echo(json.dumps({"listeners": reached}))
