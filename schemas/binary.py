"""Avro binary encoders and decoders compiled from a schema into plain Python functions.

The codec's hot path: when writer and reader schema are the same, generated straight-line
code runs several times faster than fastavro's generic interpreter on small records.
Records map to dicts shaped as fastavro's, or, when a class is given for a record's full
name, straight to and from instances of it (attributes named as the fields; enums to the
given Enum classes). Schema resolution (older or newer writers) stays with fastavro.
Logical types are not applied: timestamps stay int epoch milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CompiledCodec", "compile_schema"]

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_ONE_BYTE = [bytes((i,)) for i in range(128)]
_LEN_TABLE_SIZE = 1 << 13  # lengths and counts below this are encoded by lookup
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")

_PRIMITIVE_MIN_SIZE = {
    "null": 0,
    "boolean": 1,
    "int": 1,
    "long": 1,
    "float": 4,
    "double": 8,
    "bytes": 1,
    "string": 1,
}


def _write_long(n: int) -> bytes:
    """Zig-zag varint of a 64-bit signed integer."""
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    z = (n << 1) ^ (n >> 63)
    if z < 128:
        return _ONE_BYTE[z]
    if 1 << 42 <= z < 1 << 49:  # epoch-millisecond timestamps: unrolled, no loop
        return bytes(
            (
                z & 0x7F | 0x80,
                z >> 7 & 0x7F | 0x80,
                z >> 14 & 0x7F | 0x80,
                z >> 21 & 0x7F | 0x80,
                z >> 28 & 0x7F | 0x80,
                z >> 35 & 0x7F | 0x80,
                z >> 42,
            )
        )
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_LENGTHS = [_write_long(n) for n in range(_LEN_TABLE_SIZE)]


def _write_int(n: int) -> bytes:
    if not _INT_MIN <= n <= _INT_MAX:
        raise OverflowError(f"{n} does not fit an Avro int")
    return _write_long(n)


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint within int64: at most 10 bytes, the 10th holding bit 63 only."""
    b = buf[pos]  # IndexError past the end: the caller wraps it as a decode error
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:  # also ends the loop: a 10th byte of 0 or 1 has no 0x80
            raise ValueError("varint longer than 10 bytes or beyond int64")
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


class _Generator:
    """Emits Python source for one schema; named types get one function each."""

    def __init__(self, classes: Mapping[str, type]) -> None:
        self.classes = classes  # full name -> dataclass (records) or Enum (enums)
        self.functions: list[str] = []
        self.constants: dict[str, Any] = {}
        self.named: dict[str, Any] = {}  # full name -> schema, for references
        self._compiled: set[str] = set()
        self._counter = 0

    def var(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def const(self, value: Any, stem: str) -> str:
        name = self.var(f"_{stem}")
        self.constants[name] = value
        return name

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVE_MIN_SIZE:
            return self.named[schema]
        if isinstance(schema, dict) and schema.get("type") in _PRIMITIVE_MIN_SIZE:
            return schema["type"]
        return schema

    def kind(self, schema: Any) -> str:
        schema = self.resolve(schema)
        if isinstance(schema, str):
            return schema
        if isinstance(schema, list):
            return "union"
        return schema["type"]

    def register(self, schema: Any) -> None:
        """Record named types at their definition, so later references resolve."""
        if isinstance(schema, list):
            for branch in schema:
                self.register(branch)
        elif isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "error", "enum", "fixed"):
                self.named.setdefault(schema["name"], schema)
            if kind in ("record", "error"):
                for f in schema["fields"]:
                    self.register(f["type"])
            elif kind == "array":
                self.register(schema["items"])
            elif kind == "map":
                self.register(schema["values"])

    def min_size(self, schema: Any, seen: frozenset[str] = frozenset()) -> int:
        schema = self.resolve(schema)
        kind = self.kind(schema)
        if kind in _PRIMITIVE_MIN_SIZE:
            return _PRIMITIVE_MIN_SIZE[kind]
        if kind == "fixed":
            return schema["size"]
        if kind in ("record", "error"):
            if schema["name"] in seen:
                return 0
            inner = seen | {schema["name"]}
            return sum(self.min_size(f["type"], inner) for f in schema["fields"])
        return 1  # enum, array, map, union: at least one varint

    # -- encoder -----------------------------------------------------------------------

    def encode(self, schema: Any, value: str, indent: str) -> list[str]:
        schema = self.resolve(schema)
        kind = self.kind(schema)
        i = indent
        if kind == "null":
            return [f"{i}if {value} is not None: raise TypeError('expected None')"]
        if kind == "boolean":
            return [f"{i}out += b'\\x01' if {value} else b'\\x00'"]
        if kind == "int":
            return [f"{i}out += _write_int({value})"]
        if kind == "long":
            return [f"{i}out += _write_long({value})"]
        if kind == "float":
            return [f"{i}out += _FLOAT.pack({value})"]
        if kind == "double":
            return [f"{i}out += _DOUBLE.pack({value})"]
        if kind == "bytes":
            return [*self.write_length(value, i), f"{i}out += {value}"]
        if kind == "string":
            b = self.var("b")
            return [f"{i}{b} = {value}.encode()", *self.write_length(b, i), f"{i}out += {b}"]
        if kind == "enum":
            table = self.const({s: _write_long(n) for n, s in enumerate(schema["symbols"])}, "sym")
            return [f"{i}out += {table}[{value}]"]
        if kind == "fixed":
            size = schema["size"]
            return [
                f"{i}if len({value}) != {size}: raise ValueError('fixed size {size}')",
                f"{i}out += {value}",
            ]
        if kind in ("record", "error"):
            return [f"{i}{self.encoder_function(schema)}({value}, out)"]
        if kind == "array":
            x = self.var("x")
            return [
                f"{i}if {value}:",
                *self.write_length(value, i + "    "),
                f"{i}    for {x} in {value}:",
                *self.encode(schema["items"], x, i + "        "),
                f"{i}out += b'\\x00'",
            ]
        if kind == "map":
            k, x, kb = self.var("k"), self.var("x"), self.var("kb")
            return [
                f"{i}if {value}:",
                *self.write_length(value, i + "    "),
                f"{i}    for {k}, {x} in {value}.items():",
                f"{i}        {kb} = {k}.encode()",
                *self.write_length(kb, i + "        "),
                f"{i}        out += {kb}",
                *self.encode(schema["values"], x, i + "        "),
                f"{i}out += b'\\x00'",
            ]
        if kind == "union":
            lines = []
            for n, branch in enumerate(schema):
                test = self.union_test(branch, value)
                lines.append(f"{i}{'if' if n == 0 else 'elif'} {test}:")
                lines.append(f"{i}    out += {_ONE_BYTE[n << 1]!r}")
                lines.extend(self.encode(branch, value, i + "    "))
            lines.append(
                f"{i}else: raise TypeError('no union branch fits ' + type({value}).__name__)"
            )
            return lines
        raise ValueError(f"unsupported Avro type {kind!r}")

    def write_length(self, value: str, indent: str) -> list[str]:
        n = self.var("n")
        return [
            f"{indent}{n} = len({value})",
            f"{indent}out += _LENGTHS[{n}] if {n} < {_LEN_TABLE_SIZE} else _write_long({n})",
        ]

    def union_test(self, branch: Any, value: str) -> str:
        branch = self.resolve(branch)
        kind = self.kind(branch)
        tests = {
            "null": f"{value} is None",
            "boolean": f"isinstance({value}, bool)",
            "int": f"isinstance({value}, int)",
            "long": f"isinstance({value}, int)",
            "float": f"isinstance({value}, (int, float))",
            "double": f"isinstance({value}, (int, float))",
            "bytes": f"isinstance({value}, (bytes, bytearray, memoryview))",
            "string": f"isinstance({value}, str)",
            "array": f"isinstance({value}, (list, tuple))",
            "map": f"isinstance({value}, dict)",
            "record": f"isinstance({value}, dict)",
            "error": f"isinstance({value}, dict)",
        }
        if kind in ("record", "error") and branch["name"] in self.classes:
            return f"isinstance({value}, {self.const(self.classes[branch['name']], 'cls')})"
        if kind == "enum":
            return f"{value} in {self.const(frozenset(branch['symbols']), 'symset')}"
        if kind == "fixed":
            return f"isinstance({value}, bytes) and len({value}) == {branch['size']}"
        return tests[kind]

    def encoder_function(self, schema: dict) -> str:
        fname = "_enc_" + schema["name"].replace(".", "_")
        key = "enc:" + schema["name"]
        if key not in self._compiled:
            self._compiled.add(key)  # before the body: records may refer to themselves
            body = []
            by_attribute = schema["name"] in self.classes
            for f in schema["fields"]:
                access = f"d.{f['name']}" if by_attribute else f"d[{f['name']!r}]"
                body.extend(self.encode(f["type"], access, "    "))
            self.functions.append("\n".join([f"def {fname}(d, out):", *body, "    return out"]))
        return fname

    # -- decoder -----------------------------------------------------------------------

    def read_long(self, target: str, indent: str) -> list[str]:
        # Inline the one-byte case: lengths, indices and counts are nearly always < 64.
        i = indent
        return [
            f"{i}{target} = buf[pos]",
            f"{i}if {target} < 0x80:",
            f"{i}    {target} = ({target} >> 1) ^ -({target} & 1)",
            f"{i}    pos += 1",
            f"{i}else:",
            f"{i}    {target}, pos = _read_long(buf, pos)",
        ]

    def read_length(self, target: str, indent: str) -> list[str]:
        # A one-byte zig-zag varint is non-negative exactly when it is even.
        i = indent
        return [
            f"{i}{target} = buf[pos]",
            f"{i}if {target} < 0x80 and not {target} & 1:",
            f"{i}    {target} >>= 1",
            f"{i}    pos += 1",
            f"{i}else:",
            f"{i}    {target}, pos = _read_long(buf, pos)",
        ]

    def read_index(self, target: str, indent: str) -> list[str]:
        """An enum or union index, as its zig-zag value (2 * index) when canonical."""
        i = indent
        return [
            f"{i}{target} = buf[pos]",
            f"{i}if {target} < 0x80:",
            f"{i}    pos += 1",
            f"{i}else:  # a non-minimal varint: decode it and re-zig-zag",
            f"{i}    {target}, pos = _read_long(buf, pos)",
            f"{i}    {target} = {target} * 2 if 0 <= {target} < 64 else 255",
        ]

    def read_sized(self, target: str, indent: str, text: bool) -> list[str]:
        i = indent
        n, end = self.var("n"), self.var("end")
        value = f"buf[pos:{end}].decode()" if text else f"buf[pos:{end}]"
        return [
            *self.read_length(n, i),
            f"{i}{end} = pos + {n}",
            f"{i}if {n} < 0 or {end} > blen: raise _Truncated",
            f"{i}{target} = {value}",
            f"{i}pos = {end}",
        ]

    def decode(self, schema: Any, target: str, indent: str) -> list[str]:
        schema = self.resolve(schema)
        kind = self.kind(schema)
        i = indent
        if kind == "null":
            return [f"{i}{target} = None"]
        if kind == "boolean":
            b = self.var("b")
            return [
                f"{i}{b} = buf[pos]",
                f"{i}if {b} > 1: raise ValueError('invalid boolean')",
                f"{i}{target} = {b} == 1",
                f"{i}pos += 1",
            ]
        if kind == "int":
            return [
                *self.read_long(target, i),
                f"{i}if not {_INT_MIN} <= {target} <= {_INT_MAX}: raise ValueError('int overflow')",
            ]
        if kind == "long":
            return self.read_long(target, i)
        if kind in ("float", "double"):
            packer, size = ("_FLOAT", 4) if kind == "float" else ("_DOUBLE", 8)
            return [f"{i}{target} = {packer}.unpack_from(buf, pos)[0]", f"{i}pos += {size}"]
        if kind in ("bytes", "string"):
            return self.read_sized(target, i, text=kind == "string")
        if kind == "enum":
            # Indexed by the raw zig-zag byte; odd (negative) and too-large slots are None.
            enum_type = self.classes.get(schema["name"])
            values = [enum_type(s) if enum_type else s for s in schema["symbols"]]
            n = self.var("n")
            if len(values) > 63:  # the raw-byte table covers one-byte indices only
                table = self.const(tuple(values), "symbols")
                return [
                    *self.read_long(n, i),
                    f"{i}if not 0 <= {n} < {len(values)}: raise ValueError('enum index')",
                    f"{i}{target} = {table}[{n}]",
                ]
            raw: list[Any] = [None] * 256
            for index, value in enumerate(values):
                raw[index << 1] = value
            symbols = self.const(tuple(raw), "symbols")
            return [
                *self.read_index(n, i),
                f"{i}{target} = {symbols}[{n}]",
                f"{i}if {target} is None: raise ValueError('enum index out of range')",
            ]
        if kind == "fixed":
            size = schema["size"]
            return [
                f"{i}if pos + {size} > blen: raise _Truncated",
                f"{i}{target} = buf[pos:pos + {size}]",
                f"{i}pos += {size}",
            ]
        if kind in ("record", "error"):
            return [f"{i}{target}, pos = {self.decoder_function(schema)}(buf, pos, blen)"]
        if kind in ("array", "map"):
            return self.decode_blocks(schema, kind, target, i)
        if kind == "union":
            if len(schema) > 63:
                raise ValueError("unions of more than 63 branches are not supported")
            idx = self.var("u")
            lines = self.read_index(idx, i)
            for n, branch in enumerate(schema):
                lines.append(f"{i}{'if' if n == 0 else 'elif'} {idx} == {n << 1}:")
                lines.extend(self.decode(branch, target, i + "    "))
            lines.append(f"{i}else: raise ValueError('union index out of range')")
            return lines
        raise ValueError(f"unsupported Avro type {kind!r}")

    def decode_blocks(self, schema: dict, kind: str, target: str, i: str) -> list[str]:
        n, x, k, ignored = self.var("n"), self.var("x"), self.var("k"), self.var("size")
        item = schema["items"] if kind == "array" else schema["values"]
        min_size = self.min_size(item) + (1 if kind == "map" else 0)
        lines = [
            f"{i}{target} = {'[]' if kind == 'array' else '{}'}",
            f"{i}while True:",
            *self.read_long(n, i + "    "),
            f"{i}    if {n} == 0: break",
            f"{i}    if {n} < 0:",  # negative count: a byte size follows (Avro spec)
            f"{i}        {n} = -{n}",
            f"{i}        {ignored}, pos = _read_long(buf, pos)",
        ]
        if min_size:  # refuse absurd counts before looping on them
            lines.append(f"{i}    if {n} * {min_size} > blen - pos: raise _Truncated")
        lines.append(f"{i}    for _ in range({n}):")
        if kind == "map":
            lines.extend(self.read_sized(k, i + "        ", text=True))
        lines.extend(self.decode(item, x, i + "        "))
        if kind == "array":
            lines.append(f"{i}        {target}.append({x})")
        else:
            lines.append(f"{i}        {target}[{k}] = {x}")
        return lines

    def construct(self, schema: dict, names: dict[str, str]) -> str:
        record_type = self.classes.get(schema["name"])
        if record_type is None:
            return "{" + ", ".join(f"{k!r}: {v}" for k, v in names.items()) + "}"
        # Positional arguments in the class's own order: the fastest way to build it.
        order = [f.name for f in dataclasses.fields(record_type) if f.init]
        if set(order) != set(names):
            raise ValueError(
                f"{record_type.__name__} fields {sorted(order)} do not mirror "
                f"{schema['name']} fields {sorted(names)}"
            )
        args = ", ".join(names[name] for name in order)
        return f"{self.const(record_type, 'cls')}({args})"

    def decoder_function(self, schema: dict) -> str:
        fname = "_dec_" + schema["name"].replace(".", "_")
        key = "dec:" + schema["name"]
        if key not in self._compiled:
            self._compiled.add(key)
            body: list[str] = []
            names = {}
            for f in schema["fields"]:
                names[f["name"]] = var = self.var("f")
                body.extend(self.decode(f["type"], var, "    "))
            body.append(f"    return {self.construct(schema, names)}, pos")
            self.functions.append("\n".join([f"def {fname}(buf, pos, blen):", *body]))
        return fname


class _Truncated(ValueError):
    """A length or count runs past the end of the buffer."""


class CompiledCodec:
    """Encoder and decoder functions for one parsed record schema."""

    def __init__(self, encode: Callable[[Any, bytearray], bytearray], decode: Callable) -> None:
        self._encode = encode
        self._decode = decode

    def encode(self, datum: Any, prefix: bytes = b"") -> bytes:
        """Avro binary of `datum` (dict or mapped instance) after `prefix` (a header)."""
        return bytes(self._encode(datum, bytearray(prefix)))

    def decode(self, buf: bytes, pos: int = 0) -> tuple[Any, int]:
        """The record starting at `pos` in `buf` (bytes), and the position after it."""
        return self._decode(buf, pos, len(buf))


def compile_schema(schema: dict, classes: Mapping[str, type] | None = None) -> CompiledCodec:
    """Compile a parsed record schema (named types inline at first use, as fastavro's
    `parse_schema` leaves them) into a CompiledCodec.

    `classes` maps full names to dataclasses (records) or Enum classes (enums) to use
    instead of dicts and symbol strings; a class's init fields must be the record's fields.
    """
    if not isinstance(schema, dict) or schema.get("type") not in ("record", "error"):
        raise ValueError("compile_schema needs a record schema")
    gen = _Generator(classes or {})
    gen.register(schema)
    encoder = gen.encoder_function(schema)
    decoder = gen.decoder_function(schema)
    namespace: dict[str, Any] = {
        "_write_long": _write_long,
        "_write_int": _write_int,
        "_LENGTHS": _LENGTHS,
        "_read_long": _read_long,
        "_FLOAT": _FLOAT,
        "_DOUBLE": _DOUBLE,
        "_Truncated": _Truncated,
        **gen.constants,
    }
    source = "\n\n".join(gen.functions)
    exec(compile(source, f"<avro codec {schema['name']}>", "exec"), namespace)  # noqa: S102
    logger.debug("compiled Avro codec for %s (%d lines)", schema["name"], source.count("\n"))
    return CompiledCodec(namespace[encoder], namespace[decoder])
