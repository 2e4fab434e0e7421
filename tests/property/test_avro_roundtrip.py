"""Property tests: every record survives the codec, agrees with fastavro byte for byte,
tensors survive numpy, and no input makes decode raise anything but DecodeError."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import load_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streaminfer.schemas.codec import (
    CONFLUENT_MAGIC,
    SCHEMA_DIR,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    plain_schema,
    schema_fingerprint,
)
from streaminfer.schemas.errors import DecodeError
from streaminfer.schemas.records import (
    AuditEvent,
    AuditType,
    DataType,
    DeadLetter,
    Error,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
    Timings,
)

CODEC = AvroCodec()
RECORD_TYPES = (InferenceRequest, InferenceResult, AuditEvent, DeadLetter, Tensor, Error, Timings)
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------------------------

texts = st.text(max_size=24)
longs = st.integers(-(2**63), 2**63 - 1)
ints = st.integers(-(2**31), 2**31 - 1)
# Within datetime's range, so fastavro can turn them into datetimes for the cross-check.
timestamps = st.integers(-62_135_596_800_000, 253_402_300_799_999)
string_maps = st.dictionaries(texts, texts, max_size=4)
doubles = st.floats(allow_nan=False)

tensors = st.builds(
    Tensor,
    name=texts,
    datatype=st.sampled_from(DataType),
    shape=st.lists(longs, max_size=4),
    data=st.one_of(st.binary(max_size=64), st.lists(st.binary(max_size=16), max_size=4)),
)
requests = st.builds(
    InferenceRequest,
    request_id=texts,
    task=texts,
    inputs=st.lists(tensors, max_size=3),
    model_version=st.none() | texts,
    priority=st.sampled_from(Priority),
    parameters=string_maps,
    created_at=timestamps,
    deadline_at=st.none() | timestamps,
    idempotency_key=st.none() | texts,
    client_id=st.none() | texts,
    trace=string_maps,
)
errors = st.builds(Error, code=texts, message=texts, retriable=st.booleans())
timings = st.builds(Timings, queued_ms=doubles, inference_ms=doubles, total_ms=doubles)
results = st.builds(
    InferenceResult,
    request_id=texts,
    task=texts,
    status=st.sampled_from(Status),
    worker_id=texts,
    model_name=st.none() | texts,
    model_version=st.none() | texts,
    outputs=st.lists(tensors, max_size=3),
    error=st.none() | errors,
    timings=timings,
    batch_size=ints,
    attempts=ints,
    created_at=timestamps,
    completed_at=timestamps,
)
audits = st.builds(
    AuditEvent,
    request_id=texts,
    task=texts,
    type=st.sampled_from(AuditType),
    actor=texts,
    event_id=texts,
    at=timestamps,
    input_digest=st.none() | texts,
    details=string_maps,
)
dead_letters = st.builds(
    DeadLetter,
    source_topic=texts,
    partition=ints,
    offset=longs,
    payload=st.binary(max_size=64),
    error_code=texts,
    error_message=texts,
    key=st.none() | st.binary(max_size=16),
    at=timestamps,
    truncated=st.booleans(),
    payload_length=st.none() | longs,
    payload_sha256=st.none() | texts,
)
records = st.one_of(requests, results, audits, dead_letters, tensors, errors, timings)

# -- round trips ----------------------------------------------------------------------------------


@SETTINGS
@given(records)
def test_every_record_round_trips(record: Any) -> None:
    data = CODEC.encode(record)
    assert CODEC.decode(data, type(record)) == record


@SETTINGS
@given(records)
def test_encoding_agrees_with_fastavro(record: Any) -> None:
    schema = CODEC.schema(type(record))
    data = CODEC.encode(record)
    out = BytesIO()
    schemaless_writer(out, schema, record.to_avro())
    assert data[10:] == out.getvalue()
    # ...and what fastavro reads back (datetimes for timestamps) maps to the same record.
    assert type(record).from_avro(schemaless_reader(BytesIO(data[10:]), schema, None)) == record


_NUMERIC = [
    np.bool_,
    np.uint8,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]
_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@SETTINGS
@given(hnp.arrays(st.sampled_from(_NUMERIC).map(np.dtype), _shapes))
def test_numeric_tensors_round_trip_through_numpy_and_avro(array: np.ndarray) -> None:
    tensor = Tensor.from_numpy("x", array)
    decoded = CODEC.decode(CODEC.encode(tensor), Tensor)
    for back in (tensor.to_numpy(), decoded.to_numpy()):
        assert back.shape == array.shape and back.dtype == array.dtype
        assert back.tobytes() == array.tobytes()  # bit-exact, NaN payloads and -0.0 included


@SETTINGS
@given(
    hnp.arrays(np.dtype(">f2"), _shapes) | hnp.arrays(np.dtype(">i8"), _shapes),
)
def test_big_endian_arrays_are_written_little_endian(array: np.ndarray) -> None:
    tensor = Tensor.from_numpy("x", array)
    little = array.astype(array.dtype.newbyteorder("<"))
    assert tensor.data == little.tobytes()
    np.testing.assert_array_equal(tensor.to_numpy(), array)


@SETTINGS
@given(hnp.arrays(np.dtype(object), _shapes, elements=st.text(max_size=12)))
def test_bytes_tensors_round_trip(array: np.ndarray) -> None:
    tensor = Tensor.from_numpy("text", array)
    assert tensor.datatype is DataType.BYTES
    back = CODEC.decode(CODEC.encode(tensor), Tensor).to_numpy()
    assert back.shape == array.shape and back.tolist() == array.tolist()


# -- nothing but DecodeError -------------------------------------------------------------------------


def _older_request_codec() -> tuple[AvroCodec, bytes]:
    """A codec that also knows an older InferenceRequest (no trace): fastavro's path."""
    codec = AvroCodec()
    older = plain_schema(codec.schema(InferenceRequest))  # Tensor inline, as producers see it
    older["fields"] = [f for f in older["fields"] if f["name"] != "trace"]
    codec.register_writer_schema(older)
    return codec, SINGLE_OBJECT_MAGIC + schema_fingerprint(older)


OLDER_CODEC, OLDER_HEADER = _older_request_codec()
# The previous DeadLetter, which every codec accepts from schemas/history/.
V1_DEAD_LETTER_HEADER = SINGLE_OBJECT_MAGIC + schema_fingerprint(
    load_schema(str(SCHEMA_DIR / "history" / "io.streaminfer.v1.DeadLetter.v1.avsc"))
)


def _decode_or_decode_error(codec: AvroCodec, data: bytes, record_type: type) -> None:
    try:
        record = codec.decode(data, record_type)
    except DecodeError:
        return
    assert isinstance(record, record_type)
    codec.encode(record)  # what decodes is within range: it encodes again


@SETTINGS
@given(st.binary(max_size=256), st.sampled_from(RECORD_TYPES))
def test_random_bytes(data: bytes, record_type: type) -> None:
    _decode_or_decode_error(CODEC, data, record_type)


@SETTINGS
@given(
    st.binary(max_size=256).filter(lambda b: not b or b[0] not in (0x00, 0xC3)),
    st.sampled_from(RECORD_TYPES),
)
def test_bytes_without_our_magic_never_decode(data: bytes, record_type: type) -> None:
    with pytest.raises(DecodeError):
        CODEC.decode(data, record_type)


@SETTINGS
@given(st.sampled_from(RECORD_TYPES), st.binary(max_size=256))
def test_random_bodies_behind_valid_headers(record_type: type, body: bytes) -> None:
    _decode_or_decode_error(
        CODEC, SINGLE_OBJECT_MAGIC + CODEC.fingerprint(record_type) + body, record_type
    )
    _decode_or_decode_error(CODEC, CONFLUENT_MAGIC + b"\x00\x00\x00\x01" + body, record_type)


@SETTINGS
@given(st.binary(max_size=256))
def test_random_bodies_through_schema_resolution(body: bytes) -> None:
    _decode_or_decode_error(OLDER_CODEC, OLDER_HEADER + body, InferenceRequest)


@SETTINGS
@given(st.binary(max_size=256))
def test_random_bodies_behind_the_previous_dead_letter_header(body: bytes) -> None:
    _decode_or_decode_error(CODEC, V1_DEAD_LETTER_HEADER + body, DeadLetter)


@SETTINGS
@given(records, st.data())
def test_truncated_encodings_never_decode(record: Any, data: st.DataObject) -> None:
    encoded = CODEC.encode(record)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        CODEC.decode(encoded[:cut], type(record))


@SETTINGS
@given(records, st.data())
def test_corrupted_encodings_decode_or_raise_decode_error(record: Any, data: st.DataObject) -> None:
    encoded = bytearray(CODEC.encode(record))
    index = data.draw(st.integers(10, max(10, len(encoded) - 1)))
    if index < len(encoded):
        encoded[index] ^= data.draw(st.integers(1, 255))
    _decode_or_decode_error(CODEC, bytes(encoded), type(record))
