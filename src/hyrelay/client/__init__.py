"""hyrelay.client: the asyncio Python SDK for Hybrid Connections (listener and sender).

::

    async with HybridConnectionListener.from_connection_string(cs, entity="orders") as listener:
        async for connection in listener:
            ...

    client = HybridConnectionClient.from_connection_string(cs, entity="orders")
    async with await client.connect() as connection:
        await connection.send("hello")

Relayed HTTP requests go to ``request_handler(RelayedRequest, RelayedResponse)``; ready-made handlers:
``hyrelay.client.asgi.AsgiHandler`` (any ASGI app) and ``hyrelay.client.proxy.ProxyHandler``
(a local HTTP service).
"""

from ..protocol.errors import (BadGateway, BadRequest, EndpointNotFound, Forbidden, GatewayTimeout, Gone,
                               QuotaExceeded, RelayError, Unauthorized)
from .connection import ConnectionClosed, Headers, HybridConnection
from .http import ClientDisconnected, RelayedRequest, RelayedResponse, RequestBody, RequestHandler
from .listener import AcceptRequest, EventName, HybridConnectionListener, ListenerEvent
from .sender import HybridConnectionClient
from .tokens import SasKeyTokenProvider, SasTokenProvider, TokenProvider, token_provider_from_connection_string

__all__ = [
    "HybridConnectionListener", "HybridConnectionClient", "HybridConnection", "AcceptRequest", "ListenerEvent",
    "EventName", "ConnectionClosed", "Headers", "RelayedRequest", "RelayedResponse", "RequestBody",
    "RequestHandler", "ClientDisconnected", "TokenProvider", "SasKeyTokenProvider", "SasTokenProvider",
    "token_provider_from_connection_string", "RelayError", "BadRequest", "Unauthorized", "Forbidden",
    "QuotaExceeded", "EndpointNotFound", "Gone", "BadGateway", "GatewayTimeout",
]
