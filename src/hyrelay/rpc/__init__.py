"""hyrelay.rpc: JSON-RPC 2.0 services behind hybrid connections (the job WCF Relay did for .NET).

::

    from hyrelay import rpc

    class Calculator:
        @rpc.operation
        async def add(self, a: int, b: int) -> int:
            return a + b

    handle = await rpc.serve(Calculator(), cs, entity="calc")          # the service side
    async with rpc.connect(cs, Calculator, entity="calc") as calc:     # the caller side
        assert await calc.add(1, 2) == 3

See docs/rpc.md for callbacks, streams, one-way calls, events, HTTP and the CLI.
"""

from typing import Any

from .caller import Caller, ServiceProxy
from .client import Client, Connection, client_of, connect, connect_websocket
from .errors import (
    CANCELLED,
    CONNECTION_LOST,
    DEADLINE_EXCEEDED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NO_CALLBACK_CHANNEL,
    PARSE_ERROR,
    RELAY_UNAVAILABLE,
    SERVER_ERROR,
    Cancelled,
    ConnectionLost,
    DeadlineExceeded,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NoCallbackChannel,
    ParseError,
    RelayUnavailable,
    RemoteError,
    RpcError,
)
from .events import Publisher, publish
from .server import ServiceHost, WebSocketServer, serve, serve_websocket, serving
from .service import Context, event, operation, spec_of
from .sync import SyncClient


def describe(service: object) -> dict[str, Any]:
    """The OpenRPC document of a service class or instance (what ``rpc.discover`` answers)."""
    return spec_of(service).openrpc()


__all__ = [
    "operation", "event", "Context", "serve", "serving", "ServiceHost", "serve_websocket", "WebSocketServer",
    "connect", "connect_websocket", "Client", "Connection", "Caller", "ServiceProxy", "client_of", "SyncClient",
    "publish", "Publisher", "describe",
    "RpcError", "RemoteError", "ParseError", "InvalidRequest", "MethodNotFound", "InvalidParams", "InternalError",
    "DeadlineExceeded", "Cancelled", "ConnectionLost", "RelayUnavailable", "NoCallbackChannel",
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR", "SERVER_ERROR",
    "DEADLINE_EXCEEDED", "CANCELLED", "CONNECTION_LOST", "RELAY_UNAVAILABLE", "NO_CALLBACK_CHANNEL",
]
