"""The sender: opens a WebSocket to a hybrid connection's listener through the relay (spec §3)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake

from .. import __version__
from ..protocol.addresses import build_address
from ._endpoint import resolve
from ._errors import error_from_handshake
from .connection import MAX_FRAGMENT_SIZE, Headers, HybridConnection
from .tokens import DEFAULT_TOKEN_LIFETIME, TokenProvider, token_provider_from_connection_string

__all__ = ["HybridConnectionClient"]

_log = logging.getLogger("hyrelay.client")
_USER_AGENT = f"hyrelay-python/{__version__}"


class HybridConnectionClient:
    """Connects senders to one hybrid connection.

    Args:
        address_or_connection_string: ``ws://host:port/$hc/name`` (``wss://``, ``sb://ns/name``) or a
            connection string.
        entity: the hybrid connection's name, when the address or connection string lacks it.
        token_provider: where tokens come from; by default the connection string's credentials.
            None (and no credentials) connects anonymously, for hybrid connections that allow it.
        token_in_query: send the token as ``sb-hc-token`` instead of the ServiceBusAuthorization header.
        max_message_size: bound for ``recv()`` of whole messages (None: none; ``recv_stream`` is
            never bounded by it).
    """

    def __init__(self, address_or_connection_string: str, *, entity: str | None = None,
                 token_provider: TokenProvider | None = None, token_in_query: bool = False,
                 max_message_size: int | None = None) -> None:
        self.endpoint, cs = resolve(address_or_connection_string, entity)
        if token_provider is None and cs is not None:
            token_provider = token_provider_from_connection_string(cs)
        self.token_provider = token_provider
        self.token_in_query = token_in_query
        self._max_size = (max_message_size, MAX_FRAGMENT_SIZE)

    @classmethod
    def from_connection_string(cls, connection_string: str, *, entity: str | None = None,
                               **kwargs: Any) -> "HybridConnectionClient":
        """A client for the connection string's EntityPath (or *entity*) with its credentials."""
        return cls(connection_string, entity=entity, **kwargs)

    @property
    def entity(self) -> str:
        return self.endpoint.entity

    async def connect(
        self,
        *,
        path_suffix: str = "",
        query: Mapping[str, str] | str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        subprotocols: Iterable[str] | None = None,
        connection_id: str | None = None,
        open_timeout: float | None = 70.0,
    ) -> HybridConnection:
        """Open a connection to a listener.

        Args:
            path_suffix: path after the hybrid connection's name (``"orders/42"``); the listener sees it.
            query: application query parameters (a dict, or a raw query string); the listener sees them.
            headers: extra HTTP headers; the listener sees them in its accept request.
            subprotocols: offered subprotocols; the listener picks one.
            connection_id: sent as ``sb-hc-id``; the listener sees it as the connection id.
            open_timeout: seconds for the whole upgrade, listener's accept included.

        Raises:
            RelayError: the relay or the listener refused; the subclass follows the status
                (Unauthorized 401, Forbidden 403, EndpointNotFound 404, GatewayTimeout 504, or
                RelayError with ``.status``) and the message is the reason phrase, TrackingId included.
            OSError, TimeoutError: the relay cannot be reached, or did not answer in time.
        """
        connection_id = connection_id or str(uuid.uuid4())
        suffix = quote(path_suffix.strip("/"), safe="/") if path_suffix else ""
        raw_path = f"{self.endpoint.raw_path}/{suffix}" if suffix else self.endpoint.raw_path
        if isinstance(query, Mapping):
            app_query = urlencode(query, quote_via=quote)
        else:
            app_query = (query or "").lstrip("?")
        app_query = "&".join(q for q in (self.endpoint.query, app_query) if q)

        extra: list[tuple[str, str]] = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        params = {"action": "connect", "id": connection_id}
        if self.token_provider is not None:
            token, _ = await self.token_provider.get_token(self.endpoint.audience, DEFAULT_TOKEN_LIFETIME)
            if self.token_in_query:
                params["token"] = token
            else:
                extra.append(("ServiceBusAuthorization", token))
        url = build_address(self.endpoint.ws_base, raw_path, app_query, **params)
        offered = list(subprotocols) if subprotocols else None
        try:
            ws = await connect(url, additional_headers=extra or None, subprotocols=offered,  # type: ignore[arg-type]
                               compression=None, max_size=self._max_size, open_timeout=open_timeout,
                               user_agent_header=_USER_AGENT)
        except InvalidHandshake as exc:
            err = error_from_handshake(exc)
            _log.info("event=connect_refused hc=%s connection=%s status=%s tracking_id=%s message=%r",
                      self.entity, connection_id, err.status, err.tracking_id, err.message)
            raise err from None
        _log.debug("event=connected hc=%s connection=%s subprotocol=%s",
                   self.entity, connection_id, ws.subprotocol or "-")
        response = ws.response
        return HybridConnection(
            ws, role="sender", id=connection_id, path_suffix=f"/{path_suffix.strip('/')}" if suffix else "",
            query=app_query, headers=Headers(response.headers.raw_items() if response is not None else None))
