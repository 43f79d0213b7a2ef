"""JSON-RPC error codes and the exceptions that carry them.

Services raise :class:`RpcError` (or one of its subclasses) to answer with a chosen code;
callers catch :class:`RemoteError`, which every failed call raises, whether the service
answered with an error or the call never got an answer (deadline, lost connection).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "SERVER_ERROR", "DEADLINE_EXCEEDED", "CANCELLED", "CONNECTION_LOST", "RELAY_UNAVAILABLE",
    "NO_CALLBACK_CHANNEL",
    "RpcError", "RemoteError", "ParseError", "InvalidRequest", "MethodNotFound", "InvalidParams",
    "InternalError", "DeadlineExceeded", "Cancelled", "ConnectionLost", "RelayUnavailable",
    "NoCallbackChannel", "error_from_wire",
]

# The codes JSON-RPC 2.0 defines.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Ours, from the "server error" range JSON-RPC leaves to implementations (-32000 .. -32099).
#: An RpcError raised by a service without a code of its own.
SERVER_ERROR = -32000
#: The call's deadline passed before the answer came; the service was told to cancel.
DEADLINE_EXCEEDED = -32001
#: The call was cancelled (by the caller's ``$/cancel``, or because the service shut down).
CANCELLED = -32002
#: The connection to the service (through the relay) closed before the answer came.
CONNECTION_LOST = -32003
#: The relay refused the connection or could not be reached (no listener online, bad token, ...).
RELAY_UNAVAILABLE = -32004
#: The service tried to call back a caller that has no callback channel (plain HTTP, events).
NO_CALLBACK_CHANNEL = -32005


class RpcError(Exception):
    """An error with a JSON-RPC code; raise it in a service to answer with that code.

    Args:
        message: a short description, sent as the error's ``message``.
        code: the error code; by default the class's (``SERVER_ERROR`` for RpcError itself).
        data: anything JSON-encodable, sent as the error's ``data`` (omitted when None).
    """

    default_code: ClassVar[int] = SERVER_ERROR

    def __init__(self, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = self.default_code if code is None else int(code)
        self.data = data
        #: True when a call made by this process raised it (rather than code raising it on purpose):
        #: a service that lets such an error escape answers -32603, not the nested call's code.
        self.from_call = False

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, message={self.message!r}, data={self.data!r})"


class RemoteError(RpcError):
    """A call failed: the service answered with an error, or no answer can come.

    Attributes:
        code, message, data: the JSON-RPC error object's members.
    """


class ParseError(RemoteError):
    default_code = PARSE_ERROR


class InvalidRequest(RemoteError):
    default_code = INVALID_REQUEST


class MethodNotFound(RemoteError):
    default_code = METHOD_NOT_FOUND


class InvalidParams(RemoteError):
    default_code = INVALID_PARAMS


class InternalError(RemoteError):
    default_code = INTERNAL_ERROR


class DeadlineExceeded(RemoteError, TimeoutError):
    """No answer within the call's deadline (also a TimeoutError)."""

    default_code = DEADLINE_EXCEEDED


class Cancelled(RemoteError):
    default_code = CANCELLED


class ConnectionLost(RemoteError, ConnectionError):
    """The connection closed before the answer came (also a ConnectionError)."""

    default_code = CONNECTION_LOST


class RelayUnavailable(RemoteError, ConnectionError):
    """The relay refused the connection, or could not be reached; ``__cause__`` says why."""

    default_code = RELAY_UNAVAILABLE


class NoCallbackChannel(RemoteError):
    default_code = NO_CALLBACK_CHANNEL


_BY_CODE: dict[int, type[RemoteError]] = {
    cls.default_code: cls
    for cls in (ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError, DeadlineExceeded,
                Cancelled, ConnectionLost, RelayUnavailable, NoCallbackChannel)
}


def error_from_wire(code: int, message: str, data: Any = None) -> RemoteError:
    """The RemoteError (subclass, for the codes we know) for a JSON-RPC error object."""
    return _BY_CODE.get(code, RemoteError)(message, code=code, data=data)
