"""JSON-RPC 2.0 on the wire: decoding what arrives, encoding what leaves. Pure: no sockets, no asyncio.

Besides the standard messages, peers exchange three notifications of our own (names starting
with ``$/``, which JSON-RPC leaves free for extensions):

* ``$/cancel`` ``{"id": X}``: stop working on request X (the caller gave up or its deadline passed).
* ``$/item`` ``{"id": X, "item": ...}``: the next item of the stream that request X opened.
* ``$/credit`` ``{"id": X, "n": N}``: the caller of stream X can take N more items.

A stream is opened with the request ``$/stream`` ``{"method": M, "params": P, "window": N}``; its
items follow as ``$/item`` notifications and the request's response (result null) ends it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .errors import INVALID_REQUEST, PARSE_ERROR, RpcError

__all__ = [
    "Envelope", "Id", "decode_message", "decode_batch", "is_batch", "encode_request", "encode_notification",
    "encode_result", "encode_error", "encode_batch", "encode", "CANCEL", "ITEM", "CREDIT", "STREAM",
    "DISCOVER", "RESERVED_PREFIXES", "EMPTY", "encode_item", "encode_cancel", "encode_credit", "encode_stream",
    "cancel_params", "credit_params", "item_params", "stream_params", "params_message",
]

CANCEL = "$/cancel"
ITEM = "$/item"
CREDIT = "$/credit"
STREAM = "$/stream"
DISCOVER = "rpc.discover"
#: Method names a service may not use for its own operations.
RESERVED_PREFIXES = ("$/", "rpc.")

Id = int | str | None
EMPTY = msgspec.Raw(b"")


class Envelope(msgspec.Struct):
    """Any one JSON-RPC message; ``params`` and ``result`` stay raw until we know their types."""

    jsonrpc: str | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: msgspec.Raw = EMPTY
    id: int | str | None | UnsetType = UNSET
    result: msgspec.Raw = EMPTY
    error: Any = UNSET

    @property
    def is_request(self) -> bool:
        """A request or a notification (it names a method)."""
        return self.method is not UNSET

    @property
    def is_notification(self) -> bool:
        return self.id is UNSET


class _Request(msgspec.Struct):
    jsonrpc: str
    method: str
    params: Any
    id: int | str


class _BareRequest(msgspec.Struct):
    jsonrpc: str
    method: str
    id: int | str


class _Notification(msgspec.Struct):
    jsonrpc: str
    method: str
    params: Any


class _BareNotification(msgspec.Struct):
    jsonrpc: str
    method: str


class _Result(msgspec.Struct):
    jsonrpc: str
    result: Any
    id: int | str | None


class _ErrorObject(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class _Error(msgspec.Struct):
    jsonrpc: str
    error: _ErrorObject
    id: int | str | None


class CancelParams(msgspec.Struct):
    id: int | str | None


class CreditParams(msgspec.Struct):
    id: int | str | None
    n: int


class ItemParams(msgspec.Struct):
    id: int | str | None
    item: msgspec.Raw


class StreamParams(msgspec.Struct, kw_only=True):
    method: str
    params: msgspec.Raw = EMPTY
    window: int = 16


class _StreamOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    method: str
    params: Any = UNSET
    window: int


class _ItemOut(msgspec.Struct):
    id: int | str | None
    item: Any


class _CancelOut(msgspec.Struct):
    id: int | str | None


class _CreditOut(msgspec.Struct):
    id: int | str | None
    n: int


class _ItemNotification(msgspec.Struct):
    jsonrpc: str
    method: str
    params: _ItemOut


_envelope = msgspec.json.Decoder(Envelope)
cancel_params = msgspec.json.Decoder(CancelParams)
credit_params = msgspec.json.Decoder(CreditParams)
item_params = msgspec.json.Decoder(ItemParams)
stream_params = msgspec.json.Decoder(StreamParams)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def is_batch(data: str | bytes) -> bool:
    """True if *data* is a JSON array (a batch), judged by its first non-blank character."""
    if isinstance(data, bytes):
        return data.lstrip()[:1] == b"["
    return data.lstrip()[:1] == "["


def decode_batch(data: str | bytes) -> list[msgspec.Raw]:
    """The elements of a batch, undecoded.

    Raises:
        RpcError: -32700 for malformed JSON.
    """
    try:
        return _raw_list.decode(data)
    except msgspec.DecodeError as exc:
        raise RpcError(f"Parse error: {exc}", code=PARSE_ERROR) from None


def decode_message(data: str | bytes | msgspec.Raw) -> Envelope:
    """One message (not a batch).

    Raises:
        RpcError: -32700 for malformed JSON, -32600 for JSON that is not a JSON-RPC 2.0 message;
            ``data`` then holds the message's id when it could be read (``{"id": ...}``).
    """
    try:
        envelope = _envelope.decode(data)
    except msgspec.ValidationError as exc:
        raise RpcError(f"Invalid request: {exc}", code=INVALID_REQUEST, data=_salvage_id(data)) from None
    except msgspec.DecodeError as exc:
        raise RpcError(f"Parse error: {exc}", code=PARSE_ERROR) from None
    if envelope.jsonrpc != "2.0":
        raise RpcError('Invalid request: "jsonrpc" must be "2.0"', code=INVALID_REQUEST,
                       data={"id": None if envelope.id is UNSET else envelope.id})
    return envelope


def _salvage_id(data: str | bytes | msgspec.Raw) -> dict[str, Id]:
    # An invalid request is answered with its id when the id itself is valid (JSON-RPC 2.0 §5).
    try:
        value = _any.decode(data)
    except msgspec.DecodeError:
        return {"id": None}
    found = value.get("id") if isinstance(value, dict) else None
    return {"id": found if isinstance(found, (int, str)) and not isinstance(found, bool) else None}


def encode_request(method: str, params: Any, id: int | str) -> bytes:
    """A request; *params* UNSET leaves the member out."""
    if params is UNSET:
        return _encoder.encode(_BareRequest("2.0", method, id))
    return _encoder.encode(_Request("2.0", method, params, id))


def encode_notification(method: str, params: Any = UNSET) -> bytes:
    if params is UNSET:
        return _encoder.encode(_BareNotification("2.0", method))
    return _encoder.encode(_Notification("2.0", method, params))


def encode_result(id: Id, result: Any) -> bytes:
    """A success response.

    Raises:
        TypeError, msgspec.EncodeError: *result* cannot be encoded as JSON.
    """
    return _encoder.encode(_Result("2.0", result, id))


def encode_error(id: Id, code: int, message: str, data: Any = None) -> bytes:
    """An error response; *data* that cannot be encoded is replaced by its repr."""
    try:
        return _encoder.encode(_Error("2.0", _ErrorObject(code, message, data), id))
    except (TypeError, msgspec.EncodeError):
        return _encoder.encode(_Error("2.0", _ErrorObject(code, message, repr(data)), id))


def encode_item(id: Id, item: Any) -> bytes:
    """``$/item``: the next item of stream *id*.

    Raises:
        TypeError, msgspec.EncodeError: *item* cannot be encoded as JSON.
    """
    return _encoder.encode(_ItemNotification("2.0", ITEM, _ItemOut(id, item)))


def encode_cancel(id: Id) -> bytes:
    return _encoder.encode(_Notification("2.0", CANCEL, _CancelOut(id)))


def encode_credit(id: Id, n: int) -> bytes:
    return _encoder.encode(_Notification("2.0", CREDIT, _CreditOut(id, n)))


def encode_stream(method: str, params: Any, window: int, id: int | str) -> bytes:
    """``$/stream``: open a stream of *method*'s items, the first *window* of them granted."""
    return _encoder.encode(_Request("2.0", STREAM, _StreamOut(method=method, params=params, window=window), id))


def encode_batch(parts: list[bytes]) -> bytes:
    """A JSON array of already encoded messages."""
    return b"[" + b",".join(parts) + b"]"


# -- validation messages that name parameters ------------------------------------------------------

_AT = re.compile(r" - at `\$(\[(\d+)\]|\.([A-Za-z_][A-Za-z0-9_]*))([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`(?: - at `\$([^`]*)`)?$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`(?: - at `\$([^`]*)`)?$")
_TOO_MANY = re.compile(r"^Expected `array` of at most length (\d+)(?:, got (\d+))?$")
_TOO_FEW = re.compile(r"^Expected `array` of at least length (\d+)(?:, got (\d+))?$")
_LENGTH = re.compile(r"^Expected `array` of length (\d+)(?:, got (\d+))?$")


def params_message(error: str, names: list[str], required: int) -> str:
    """Rewrite msgspec's validation message about a params struct so it names the parameter.

    Args:
        error: msgspec's message, e.g. "Expected `int`, got `str` - at `$[1]`".
        names: the parameters in order.
        required: how many of the leading parameters have no default.
    """
    if m := _MISSING.match(error):
        if not m.group(2):
            return f"missing required parameter '{m.group(1)}'"
        return f"invalid parameter {_path(m.group(2), names)}: missing field '{m.group(1)}'"
    if m := _UNKNOWN.match(error):
        if not m.group(2):
            return f"unexpected parameter '{m.group(1)}'"
        return f"invalid parameter {_path(m.group(2), names)}: unexpected field '{m.group(1)}'"
    if m := (_TOO_MANY.match(error) or _LENGTH.match(error)):
        given = f", got {m.group(2)}" if m.group(2) else ""
        return f"too many parameters: takes at most {len(names)}{given}"
    if m := _TOO_FEW.match(error):
        count = int(m.group(2) or 0)
        missing = ", ".join(f"'{n}'" for n in names[count:required])
        return f"missing required parameter{'s' if required - count > 1 else ''} {missing}"
    if m := _AT.search(error):
        head = error[: m.start()]
        index, name, rest = m.group(2), m.group(3), m.group(4)
        param = names[int(index)] if index is not None and int(index) < len(names) else name
        where = f" (at {param}{rest})" if rest else ""
        return f"invalid parameter '{param}'{where}: {head}"
    return f"invalid parameters: {error}"


def _path(path: str, names: list[str]) -> str:
    m = re.match(r"^\[(\d+)\](.*)$", path) or re.match(r"^\.([A-Za-z_][A-Za-z0-9_]*)(.*)$", path)
    if m is None:
        return f"at ${path}"
    head = m.group(1)
    if head.isdigit():
        head = names[int(head)] if int(head) < len(names) else head
    return f"'{head}'" + (f" (at {head}{m.group(2)})" if m.group(2) else "")
