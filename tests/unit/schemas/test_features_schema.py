"""Timings' feature lookup fields (issue 14): results of the previous version still decode, and a
reader of the previous version reads the new results (Avro resolution drops the added fields)."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

from streaminfer.schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec
from streaminfer.schemas.records import InferenceResult, Status, Timings

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"
V1 = SCHEMA_DIR / "history" / "io.streaminfer.v1.InferenceResult.v1.avsc"


def _result(timings: Timings) -> InferenceResult:
    return InferenceResult(
        request_id="r-1",
        task="tabular-classify",
        status=Status.SUCCEEDED,
        worker_id="w",
        timings=timings,
        created_at=1,
        completed_at=2,
    )


def test_a_result_of_the_previous_version_decodes_with_no_lookup() -> None:
    codec = AvroCodec()
    older = parse_schema(json.loads(V1.read_text()))
    out = BytesIO()
    out.write(
        SINGLE_OBJECT_MAGIC
        + bytes.fromhex(fingerprint(to_parsing_canonical_form(older), "CRC-64-AVRO"))
    )
    schemaless_writer(out, older, _result(Timings(1.0, 2.0, 3.0)).to_avro())
    assert out.getvalue()[2:10] != codec.fingerprint(InferenceResult)  # a real older writer
    decoded = codec.decode(out.getvalue(), InferenceResult)
    assert decoded.timings == Timings(1.0, 2.0, 3.0, None, None)


def test_the_previous_reader_reads_a_result_with_lookup_timings() -> None:
    codec = AvroCodec()
    data = codec.encode(
        _result(Timings(1.0, 2.0, 3.0, feature_lookup_ms=0.4, feature_source="cache"))
    )
    assert codec.decode(data, InferenceResult).timings.feature_source == "cache"
    writer = parse_schema(load_schema(str(SCHEMA_DIR / "io.streaminfer.v1.InferenceResult.avsc")))
    reader = parse_schema(json.loads(V1.read_text()))
    old = schemaless_reader(BytesIO(data[10:]), writer, reader)
    assert old["timings"] == {"queued_ms": 1.0, "inference_ms": 2.0, "total_ms": 3.0}
    assert old["request_id"] == "r-1"
