"""A service's OpenRPC document (https://spec.open-rpc.org), with JSON Schemas from msgspec.

Extensions, as OpenRPC allows with ``x-`` names: ``x-oneway`` on methods the caller does not
wait for, ``x-streaming`` on methods whose result is a stream of items (the result schema is the
item's), and ``x-events`` for the events the service handles (published with ``rpc.publish``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .service import Operation, ServiceSpec

__all__ = ["document", "OPENRPC_VERSION"]

OPENRPC_VERSION = "1.3.2"
_REF = "#/components/schemas/{name}"


def document(spec: ServiceSpec) -> dict[str, Any]:
    """The OpenRPC document for *spec* (plain JSON-compatible data)."""
    ops = list(spec.operations.values())
    types: list[Any] = []
    for op in ops:
        types.extend(op.param_types.values())
        if not op.oneway:
            types.append(op.result_type)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    found = iter(schemas)
    described: dict[str, dict[str, Any]] = {}
    for op in ops:
        params = [_param(op, name, next(found)) for name in op.param_types]
        entry: dict[str, Any] = {"name": op.name}
        if op.doc:
            entry["summary"] = op.doc.splitlines()[0]
            entry["description"] = op.doc
        entry["params"] = params
        entry["paramStructure"] = "either"
        if not op.oneway:
            entry["result"] = {"name": "items" if op.streaming else "result", "schema": next(found)}
        if op.oneway and not op.event:
            entry["x-oneway"] = True
        if op.streaming:
            entry["x-streaming"] = True
        described[op.name] = entry
    doc: dict[str, Any] = {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": spec.title, "version": spec.version},
        "methods": [described[op.name] for op in spec.methods],
    }
    if spec.description:
        doc["info"]["description"] = spec.description
    if spec.events:
        doc["x-events"] = [described[op.name] for op in spec.events]
    if components:
        doc["components"] = {"schemas": components}
    return doc


def _param(op: Operation, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "required": name not in op.defaults, "schema": schema}
    if name in op.defaults:
        try:
            default = msgspec.to_builtins(op.defaults[name])
        except (TypeError, msgspec.EncodeError):
            return entry
        entry["schema"] = {**schema, "default": default}
    return entry
