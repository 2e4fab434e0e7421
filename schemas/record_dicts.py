"""The dict form of our records, as fastavro writes and reads it, derived per class from its
dataclass fields and its `.avsc` file, so that no field list is written out twice.

`to_avro()` gives every field: nested records as dicts, enums and timestamps as they are (int
epoch milliseconds). `from_avro()` takes such a dict, with timestamps as int milliseconds or as
the `datetime` fastavro produces for `timestamp-millis` (always stored as int ms), enums as
their symbols, and lets a field be absent when its schema gives it a default (data an older
writer wrote): that default applies, the same value as the dataclass default (a test checks).
A field without a schema default must be there (KeyError otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = ["avro_fields", "bind_dicts"]

SCHEMA_DIR = Path(__file__).resolve().parent
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def _to_ms(value: int | datetime) -> int:
    """Normalise a timestamp-millis value read by fastavro (datetime) or by us (int)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # Avro timestamps are UTC instants
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _ONE_MS
    return int(value)


def avro_fields(avro_name: str) -> list[dict[str, Any]]:
    """The fields of record `avro_name` as its `<full name>.avsc` file declares them."""
    path = SCHEMA_DIR / f"{avro_name}.avsc"
    return json.loads(path.read_text(encoding="utf-8"))["fields"]


def bind_dicts(record_type: type, types: Mapping[str, type]) -> None:
    """Give the dataclass `record_type` (with an `AVRO_NAME`) its `to_avro` and `from_avro`.

    `types` maps Avro full names to our classes: records (with `to_avro`/`from_avro`) are
    converted as such, enums through their symbols; other named types stay dicts and strings.
    """
    namespace = record_type.AVRO_NAME.rpartition(".")[0]
    schema_fields = avro_fields(record_type.AVRO_NAME)
    class_fields = {f.name: f for f in fields(record_type) if f.init}
    if {f["name"] for f in schema_fields} != set(class_fields):
        raise ValueError(
            f"{record_type.__name__} fields {sorted(class_fields)} do not mirror "
            f"{record_type.AVRO_NAME} fields {sorted(f['name'] for f in schema_fields)}"
        )
    # NOTE: compiled to straight-line code, as schemas/binary.py does: a loop over the fields
    # took 2-3 times as long as the hand-written methods this replaces.
    source = _Source(namespace, types)
    items, arguments = [], {}
    for schema_field in schema_fields:
        name = schema_field["name"]
        to_avro, from_avro = source.converters(schema_field["type"])
        items.append(f"{name!r}: {to_avro(f'self.{name}')}")
        if "default" in schema_field:  # the Avro value, converted as a value given would be
            raw = f"d.get({name!r}, {source.literal(schema_field['default'])})"
        else:
            raw = f"d[{name!r}]"
        arguments[name] = from_avro(raw)
    positional = ", ".join(arguments[name] for name in class_fields)  # faster than keywords
    code = (
        f"def to_avro(self):\n    return {{{', '.join(items)}}}\n\n"
        f"def from_avro(cls, d):\n    return cls({positional})\n"
    )
    namespace_ = {"_to_ms": _to_ms, **source.constants}
    exec(compile(code, f"<record_dicts {record_type.__name__}>", "exec"), namespace_)
    to_avro_dict, from_avro_dict = namespace_["to_avro"], namespace_["from_avro"]
    to_avro_dict.__qualname__ = f"{record_type.__name__}.to_avro"
    to_avro_dict.__doc__ = f"This {record_type.__name__} as the dict fastavro writes."
    from_avro_dict.__qualname__ = f"{record_type.__name__}.from_avro"
    from_avro_dict.__doc__ = f"The {record_type.__name__} of a dict as fastavro reads it."
    record_type.to_avro = to_avro_dict
    record_type.from_avro = classmethod(from_avro_dict)


Expression = Callable[[str], str]
"""Python source of a field's value converted, given the source of the value itself."""


def _same(value: str) -> str:
    return value


class _Source:
    """The expressions that convert field values, and the constants they name."""

    def __init__(self, namespace: str, types: Mapping[str, type]) -> None:
        self.namespace = namespace
        self.types = types
        self.constants: dict[str, Any] = {}

    def const(self, value: Any, stem: str) -> str:
        name = f"_{stem}{len(self.constants)}"
        self.constants[name] = value
        return name

    def literal(self, value: Any) -> str:
        """Source of a JSON value; a literal where it may be, so that `{}` is a new dict each time."""
        if value is None or isinstance(value, bool | int | str) or value in ({}, []):
            return repr(value)
        return self.const(value, "default")

    def converters(self, avro_type: Any) -> tuple[Expression, Expression]:
        """`(to_avro, from_avro)` of a field of type `avro_type`."""
        branches = avro_type if isinstance(avro_type, list) else [avro_type]
        others = [branch for branch in branches if branch != "null"]
        if len(others) != 1:  # a union of several types: none of ours has one to convert
            return _same, _same
        to_avro, from_avro = self._branch(others[0])
        if len(branches) > 1:  # ["null", T]: None passes as it is
            return _or_none(to_avro), _or_none(from_avro)
        return to_avro, from_avro

    def _branch(self, avro_type: Any) -> tuple[Expression, Expression]:
        if isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-millis":
            return _same, lambda value: f"_to_ms({value})"
        if isinstance(avro_type, dict) and avro_type.get("type") == "array":
            item_to, item_from = self._branch(avro_type["items"])
            return _each(item_to), _each(item_from)
        name = avro_type.get("name") if isinstance(avro_type, dict) else avro_type
        if not isinstance(name, str) or name in _PRIMITIVES:
            return _same, _same
        python_type = self.types.get(name if "." in name else f"{self.namespace}.{name}")
        if python_type is None:  # e.g. SimilarItem: a dict
            return _same, _same
        if issubclass(python_type, Enum):
            symbols = self.const(python_type._value2member_map_, "symbols")  # Enum() is slower
            return _same, lambda value: f"{symbols}[{value}]"
        reader = self.const(python_type.from_avro, "read")
        return (lambda value: f"{value}.to_avro()"), (lambda value: f"{reader}({value})")


def _or_none(convert: Expression) -> Expression:
    if convert is _same:
        return _same
    return lambda value: f"(None if (_v := {value}) is None else {convert('_v')})"


def _each(convert: Expression) -> Expression:
    if convert is _same:
        return _same
    return lambda value: f"[{convert('item')} for item in {value}]"
