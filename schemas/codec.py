"""Avro encode/decode of the records, in single-object or Confluent framing.

Single-object (default): `C3 01` + 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's parsing canonical form + body. Confluent (with a registry URL): `00` +
4-byte big-endian registry id + body. `decode` accepts both and resolves older or newer
writer schemas against ours, following Avro's schema resolution rules; older versions of
our own schemas live in `history/` and are accepted from the start.

Within an event loop, use `decode_async` and `prepare_async`: they keep registry HTTP calls
off the loop. Registry outages raise RegistryUnavailable (retriable), never DecodeError.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

from fastavro import parse_schema, schemaless_reader
from fastavro.repository.base import AbstractSchemaRepository, SchemaRepositoryError
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

from streaminfer.schemas.binary import CompiledCodec, compile_schema
from streaminfer.schemas.errors import (
    DecodeError,
    EncodeError,
    RegistryUnavailable,
    SchemaError,
    UnknownSchema,
)
from streaminfer.schemas.records import AVRO_TYPES, RECORD_TYPES
from streaminfer.schemas.registry import LookupFailures, RegistryClient

logger = logging.getLogger(__name__)

__all__ = ["CONFLUENT_MAGIC", "SCHEMA_DIR", "SINGLE_OBJECT_MAGIC", "AvroCodec", "load_schemas"]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SCHEMA_DIR = Path(__file__).resolve().parent
# NOTE: older versions of our schemas, one self-contained file each (named types they use
# inlined as they were then, so a later change of e.g. Tensor keeps their fingerprint).
HISTORY_DIR = "history"

_SINGLE_HEADER_LEN = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER_LEN = len(CONFLUENT_MAGIC) + 4

T = TypeVar("T")


def load_schemas(schema_dir: Path | str | None = None) -> dict[str, dict]:
    """Full name -> parsed schema for every `<full name>.avsc` in `schema_dir`."""
    directory = Path(schema_dir) if schema_dir is not None else SCHEMA_DIR
    schemas: dict[str, dict] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            schema = load_schema(str(path))
        except Exception as exc:
            raise SchemaError(f"cannot load Avro schema {path}: {exc}") from exc
        schemas[schema["name"]] = schema
    return schemas


def schema_fingerprint(schema: dict | str | list) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint, in the byte order single-object encoding uses."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def plain_schema(schema: Any, *, keep_logical_types: bool = True) -> Any:
    """A JSON-ready copy of a parsed schema, without fastavro's `__` bookkeeping keys."""
    if isinstance(schema, dict):
        return {
            key: plain_schema(value, keep_logical_types=keep_logical_types)
            for key, value in schema.items()
            if not key.startswith("__") and (keep_logical_types or key != "logicalType")
        }
    if isinstance(schema, list):
        return [plain_schema(item, keep_logical_types=keep_logical_types) for item in schema]
    return schema


def _wire_schema(schema: dict) -> dict:
    # NOTE: the hot path reads and writes with logical types stripped, so timestamps stay
    # int ms and never round-trip through datetime; the fingerprint is unchanged because
    # the parsing canonical form drops logicalType anyway.
    return parse_schema(plain_schema(schema, keep_logical_types=False))


class _ReferenceRepository(AbstractSchemaRepository):
    """Serves one schema dict plus our `.avsc` files, so references to our named types
    (e.g. an older InferenceRequest naming `io.streaminfer.v1.Tensor`) are inlined the
    way any Avro parser would, and the fingerprint matches the producer's."""

    MAIN = "__main__"

    def __init__(self, main: dict, directory: Path):
        self._main = main
        self._directory = directory

    def load(self, name: str) -> Any:
        if name == self.MAIN:
            return copy.deepcopy(self._main)
        path = self._directory / f"{name}.avsc"
        if not path.is_file():
            raise SchemaRepositoryError(f"no schema named {name}")
        return json.loads(path.read_text(encoding="utf-8"))


@dataclass(slots=True, frozen=True)
class _Writer:
    """A writer schema we accept for a record, and its compiled decoder."""

    name: str  # the record's full name
    wire: dict
    # NOTE: for schemas other than ours, fastavro resolves the body, but its C reader wraps
    # varints beyond 64 bits silently; this decoder (to dicts) checks the body first: int
    # and long ranges, varints of at most 10 bytes, lengths within the buffer.
    compiled: CompiledCodec


def _writer(name: str, wire: dict) -> _Writer:
    try:
        return _Writer(name, wire, compile_schema(wire))
    except (ValueError, KeyError, TypeError) as exc:
        raise SchemaError(f"cannot compile writer schema {name}: {exc}") from exc


@dataclass(slots=True)
class _Binding:
    """Everything the codec knows about one record type."""

    record_type: type
    name: str
    schema: dict  # as loaded from the .avsc files (public)
    wire: dict  # logical types stripped; what encode/decode use
    header: bytes  # single-object header of the current schema
    compiled: CompiledCodec  # fast path for the current schema
    writers: dict[bytes, _Writer] = field(default_factory=dict)  # by fingerprint
    registry_id: int | None = None


class AvroCodec:
    """Encodes records to Kafka values and decodes them back; safe to share between threads.

    Without a registry, writes single-object encoding. With `registry_url` (or a ready
    `registry` client, e.g. with auth or TLS), writes Confluent framing, registering each
    record's schema under its full name (RecordNameStrategy).
    """

    def __init__(
        self,
        registry_url: str | None = None,
        schema_dir: Path | None = None,
        *,
        registry_timeout_s: float = 5.0,
        registry: RegistryClient | None = None,
    ):
        self._schema_dir = Path(schema_dir) if schema_dir is not None else SCHEMA_DIR
        if registry is None and registry_url:
            registry = RegistryClient(registry_url, timeout_s=registry_timeout_s)
        self._registry = registry
        loaded = load_schemas(self._schema_dir)
        self._bindings: dict[type, _Binding] = {}
        self._by_name: dict[str, _Binding] = {}
        self._fingerprint_owner: dict[bytes, str] = {}  # fingerprint -> record full name
        self._registry_writers: dict[int, _Writer] = {}  # registry id -> writer
        self._registry_failures = LookupFailures()
        for record_type in RECORD_TYPES:
            name = record_type.AVRO_NAME
            if name not in loaded:
                raise SchemaError(f"{self._schema_dir} has no {name}.avsc")
            schema = loaded[name]
            fp = schema_fingerprint(schema)
            wire = _wire_schema(schema)
            try:
                compiled = compile_schema(wire, AVRO_TYPES)  # builds our classes directly
            except ValueError as exc:  # e.g. a schema file that no longer mirrors its class
                raise SchemaError(f"cannot compile {name}: {exc}") from exc
            binding = _Binding(record_type, name, schema, wire, SINGLE_OBJECT_MAGIC + fp, compiled)
            binding.writers[fp] = _Writer(name, wire, compiled)
            self._bindings[record_type] = binding
            self._by_name[name] = binding
            self._fingerprint_owner[fp] = name
        for path in sorted((self._schema_dir / HISTORY_DIR).glob("*.avsc")):
            try:
                older = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SchemaError(f"cannot load Avro schema {path}: {exc}") from exc
            binding, fp = self._accept_writer_schema(older)
            logger.debug("accepting %s (fingerprint %s) from %s", binding.name, fp.hex(), path)

    # -- schemas ---------------------------------------------------------------------

    def schema(self, record_type: type | str) -> dict:
        """The parsed schema (as loaded from the `.avsc` file) of a record class or name."""
        return self._binding(record_type).schema

    def fingerprint(self, record_type: type | str) -> bytes:
        """The 8-byte single-object fingerprint of the current schema of a record."""
        return self._binding(record_type).header[len(SINGLE_OBJECT_MAGIC) :]

    def register_writer_schema(self, schema: dict) -> None:
        """Accept events written with `schema` (an older or newer version of one of our
        records); it may name our other types (e.g. `io.streaminfer.v1.Tensor`)."""
        binding, fp = self._accept_writer_schema(schema)
        logger.info("registered writer schema %s fingerprint %s", binding.name, fp.hex())

    def _accept_writer_schema(self, schema: dict) -> tuple[_Binding, bytes]:
        try:
            repo = _ReferenceRepository(plain_schema(schema), self._schema_dir)
            parsed = load_schema(_ReferenceRepository.MAIN, repo=repo)
            fp = schema_fingerprint(parsed)
            wire = _wire_schema(parsed)
        except Exception as exc:
            raise SchemaError(f"invalid writer schema: {exc}") from exc
        binding = self._by_name.get(parsed.get("name")) if isinstance(parsed, dict) else None
        if binding is None:
            raise SchemaError(f"writer schema {parsed.get('name')!r} is not one of our records")
        if fp not in binding.writers:  # the current schema keeps its fast path
            binding.writers[fp] = _writer(binding.name, wire)
        self._fingerprint_owner[fp] = binding.name
        return binding, fp

    def _binding(self, record_type: type | str) -> _Binding:
        binding = (
            self._by_name.get(record_type)
            if isinstance(record_type, str)
            else self._bindings.get(record_type)
        )
        if binding is None:
            raise TypeError(f"{record_type!r} is not an Avro record of this package")
        return binding

    # -- encode ----------------------------------------------------------------------

    def encode(self, record: Any) -> bytes:
        """Avro bytes of `record`, framed for Kafka. Raises EncodeError; with a registry,
        RegistryUnavailable (retriable) until its schema is registered (`prepare_async`)."""
        binding = self._bindings.get(type(record)) or self._binding(type(record))
        header = binding.header if self._registry is None else self._confluent_header(binding)
        try:
            return binding.compiled.encode(record, header)
        except SchemaError:
            raise
        except Exception as exc:
            raise EncodeError(f"cannot encode {binding.name}: {exc!r}") from exc

    def _confluent_header(self, binding: _Binding) -> bytes:
        if binding.registry_id is None and self._registry is not None:
            try:
                schema_id = self._registry.register(binding.name, plain_schema(binding.schema))
            except SchemaError:
                raise
            except Exception as exc:  # never blame the record for the registry client
                raise RegistryUnavailable(f"registering {binding.name}: {exc!r}") from exc
            # Our own events then decode without a registry round trip.
            self._registry_writers[schema_id] = binding.writers[binding.header[2:]]
            binding.registry_id = schema_id
        return CONFLUENT_MAGIC + (binding.registry_id or 0).to_bytes(4, "big")

    async def prepare_async(self) -> None:
        """Register the schema of every record type, in a thread, so that `encode` never
        calls the registry afterwards; a no-op without a registry or once done.

        Raises RegistryUnavailable (retriable: call again) or EncodeError (refused).
        """
        if self._registry is None:
            return
        if all(binding.registry_id is not None for binding in self._bindings.values()):
            return
        await asyncio.to_thread(self._register_all)

    def _register_all(self) -> None:
        for binding in self._bindings.values():
            self._confluent_header(binding)

    # -- decode ----------------------------------------------------------------------

    def decode(self, data: bytes, record_type: type[T]) -> T:
        """The record of type `record_type` in `data` (either framing).

        Raises DecodeError (UnknownSchema when the writer schema cannot be found), or
        RegistryUnavailable (retriable, not a DecodeError) when a registry look-up it needs
        fails; it may call the registry, so use `decode_async` within an event loop.
        """
        binding = self._bindings.get(record_type) or self._binding(record_type)
        if type(data) is not bytes:
            if not isinstance(data, bytearray | memoryview):
                raise DecodeError(f"expected bytes, got {type(data).__name__}")
            data = bytes(data)  # the compiled decoder slices and indexes real bytes
        try:
            if data[:_SINGLE_HEADER_LEN] == binding.header:  # the common case, one compare
                record, end = binding.compiled.decode(data, _SINGLE_HEADER_LEN)
                if end != len(data):
                    raise DecodeError(f"{len(data) - end} bytes left after the {binding.name}")
                return record
            if not data:
                raise DecodeError(f"empty message where a {binding.name} was expected")
            if data[:2] == SINGLE_OBJECT_MAGIC:
                writer = self._single_object_writer(binding, data[2:_SINGLE_HEADER_LEN])
                offset = _SINGLE_HEADER_LEN
            elif data[:1] == CONFLUENT_MAGIC:
                if len(data) < _CONFLUENT_HEADER_LEN:
                    raise DecodeError("truncated Confluent header")
                writer = self._confluent_writer(binding, int.from_bytes(data[1:5], "big"))
                offset = _CONFLUENT_HEADER_LEN
            else:
                raise DecodeError(f"unknown framing (first bytes {data[:2].hex()})")
            if writer.wire is binding.wire:
                record, end = binding.compiled.decode(data, offset)
            else:  # another schema version: let fastavro apply Avro's resolution rules
                _, end = writer.compiled.decode(data, offset)  # ranges and lengths first
                if end != len(data):
                    raise DecodeError(f"{len(data) - end} bytes left after the {binding.name}")
                buffer = BytesIO(data)
                buffer.seek(offset)
                record = binding.record_type.from_avro(
                    schemaless_reader(buffer, writer.wire, binding.wire)
                )
                end = buffer.tell()
            if end != len(data):
                raise DecodeError(f"{len(data) - end} bytes left after the {binding.name}")
            return record
        except SchemaError:  # RegistryUnavailable among them: it stays retriable
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode {binding.name}: {exc!r}") from exc

    async def decode_async(self, data: bytes, record_type: type[T]) -> T:
        """As `decode`, but a registry look-up it needs (Confluent framing with a schema id
        not cached yet) runs in a thread, off the event loop; everything else, the common
        case, runs inline. A failed look-up remembered lately is raised again at once."""
        self._binding(record_type)
        schema_id = self._uncached_schema_id(data)
        if schema_id is not None:
            self._registry_failures.check(schema_id)
            await asyncio.to_thread(self._registry_writer, schema_id)  # then cached
        return self.decode(data, record_type)

    def _uncached_schema_id(self, data: object) -> int | None:
        if (
            self._registry is None
            or not isinstance(data, bytes | bytearray | memoryview)
            or len(data) < _CONFLUENT_HEADER_LEN
            or data[0] != CONFLUENT_MAGIC[0]
        ):
            return None
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
        return None if schema_id in self._registry_writers else schema_id

    def _single_object_writer(self, binding: _Binding, fp: bytes) -> _Writer:
        writer = binding.writers.get(fp)
        if writer is not None:
            return writer
        if len(fp) < 8:
            raise DecodeError("truncated single-object header")
        owner = self._fingerprint_owner.get(fp)
        if owner is not None:
            raise DecodeError(f"event is a {owner}, not a {binding.name}")
        raise UnknownSchema(f"unknown writer schema fingerprint {fp.hex()} for {binding.name}")

    def _confluent_writer(self, binding: _Binding, schema_id: int) -> _Writer:
        if self._registry is None:  # no registry: the writer must have used our schema
            return binding.writers[binding.header[2:]]
        writer = self._registry_writers.get(schema_id) or self._registry_writer(schema_id)
        if writer.name != binding.name:
            raise DecodeError(f"event is a {writer.name}, not a {binding.name}")
        return writer

    def _registry_writer(self, schema_id: int) -> _Writer:
        """Fetch, check and cache the writer schema of `schema_id`; failures are
        remembered for a while (LookupFailures), so floods of bad ids stay cheap."""
        self._registry_failures.check(schema_id)
        try:
            raw = self._registry.schema_by_id(schema_id)  # type: ignore[union-attr]
            try:
                parsed = parse_schema(raw)
                writer = _writer(parsed["name"], _wire_schema(parsed))
            except Exception as exc:
                raise UnknownSchema(f"registry schema id {schema_id} is not usable: {exc}") from exc
        except SchemaError as exc:
            self._registry_failures.remember(schema_id, exc)
            raise
        except Exception as exc:  # the client's own failure is an outage, not the event's
            error = RegistryUnavailable(f"schema registry: schema id {schema_id}: {exc!r}")
            self._registry_failures.remember(schema_id, error)
            raise error from exc
        self._registry_writers[schema_id] = writer
        return writer

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the registry HTTP client, if any; safe to call twice."""
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> AvroCodec:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
