"""The .avsc contract (SPEC section 4): each file, its fields, types and defaults, and the Python
enums that mirror its enums. Moved whole from test_codec.py."""

from __future__ import annotations

import json

from streaminfer.schemas.codec import SCHEMA_DIR
from streaminfer.schemas.records import AuditType, DataType, Priority, Status

NS = "io.streaminfer.v1"
TS = {"type": "long", "logicalType": "timestamp-millis"}


def _raw(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{NS}.{name}.avsc").read_text())


# -- the .avsc files are SPEC section 4 ------------------------------------------------------


def _fields(name: str) -> dict[str, dict]:
    return {f["name"]: f for f in _raw(name)["fields"]}


def test_every_file_is_one_named_record_after_its_full_name() -> None:
    files = sorted(p.name for p in SCHEMA_DIR.glob("*.avsc"))
    assert files == sorted(
        f"{NS}.{n}.avsc"
        for n in (
            "Tensor",
            "InferenceRequest",
            "InferenceResult",
            "AuditEvent",
            "DeadLetter",
            "Error",
            "Timings",
            "SimilarItem",
        )
    )
    for path in SCHEMA_DIR.glob("*.avsc"):
        raw = json.loads(path.read_text())
        assert raw["type"] == "record"
        assert f"{raw['namespace']}.{raw['name']}.avsc" == path.name
        assert raw["namespace"] == NS
        assert raw["doc"].strip()


def test_tensor_matches_spec() -> None:
    f = _fields("Tensor")
    assert list(f) == ["name", "datatype", "shape", "data"]
    assert f["name"]["type"] == "string"
    assert f["datatype"]["type"]["name"] == "DataType"
    assert f["datatype"]["type"]["symbols"] == [
        "BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
    assert f["shape"]["type"] == {"type": "array", "items": "long"}
    assert f["data"]["type"] == ["bytes", {"type": "array", "items": "bytes"}]


def test_inference_request_matches_spec() -> None:
    f = _fields("InferenceRequest")
    assert list(f) == [
        "request_id", "task", "model_version", "priority", "inputs", "parameters",
        "created_at", "deadline_at", "idempotency_key", "client_id", "trace",
    ]  # fmt: skip
    assert f["request_id"]["type"] == f["task"]["type"] == "string"
    assert f["model_version"]["type"] == ["null", "string"]
    assert f["priority"]["type"]["name"] == "Priority"
    assert f["priority"]["type"]["symbols"] == ["LOW", "NORMAL", "HIGH"]
    assert f["priority"]["default"] == "NORMAL"
    assert f["inputs"]["type"] == {"type": "array", "items": f"{NS}.Tensor"}
    assert f["parameters"]["type"] == {"type": "map", "values": "string"}
    assert f["parameters"]["default"] == {}
    assert f["created_at"]["type"] == TS
    assert f["deadline_at"]["type"] == ["null", TS]
    assert f["idempotency_key"]["type"] == f["client_id"]["type"] == ["null", "string"]
    assert f["trace"]["type"] == {"type": "map", "values": "string"}
    assert f["trace"]["default"] == {}


def test_inference_result_matches_spec() -> None:
    f = _fields("InferenceResult")
    assert list(f) == [
        "request_id", "task", "status", "model_name", "model_version", "outputs", "error",
        "timings", "batch_size", "attempts", "worker_id", "created_at", "completed_at", "similar",
    ]  # fmt: skip
    assert f["status"]["type"]["symbols"] == [
        "SUCCEEDED",
        "FAILED",
        "EXPIRED",
        "CANCELLED",
        "REJECTED",
    ]
    assert f["model_name"]["type"] == f["model_version"]["type"] == ["null", "string"]
    assert f["outputs"]["type"] == {"type": "array", "items": f"{NS}.Tensor"}
    assert f["error"]["type"] == ["null", f"{NS}.Error"]
    assert f["timings"]["type"] == f"{NS}.Timings"
    assert f["batch_size"]["type"] == f["attempts"]["type"] == "int"
    assert f["worker_id"]["type"] == "string"
    assert f["created_at"]["type"] == f["completed_at"]["type"] == TS
    error = _fields("Error")
    assert {k: v["type"] for k, v in error.items()} == {
        "code": "string", "message": "string", "retriable": "boolean",
    }  # fmt: skip
    timings = _fields("Timings")
    assert {k: v["type"] for k, v in timings.items()} == {
        "queued_ms": "double", "inference_ms": "double", "total_ms": "double",
        # added for feature lookup (SPEC section 9), optional: older readers still decode
        "feature_lookup_ms": ["null", "double"], "feature_source": ["null", "string"],
    }  # fmt: skip


def test_audit_event_matches_spec() -> None:
    f = _fields("AuditEvent")
    assert list(f) == [
        "event_id", "request_id", "task", "type", "at", "actor", "input_digest", "details",
    ]  # fmt: skip
    assert f["type"]["type"]["name"] == "AuditType"
    assert f["type"]["type"]["symbols"] == [
        "ACCEPTED", "DUPLICATE", "CACHE_HIT", "STARTED", "SUCCEEDED", "FAILED", "RETRIED",
        "EXPIRED", "CANCELLED", "REJECTED", "DEAD_LETTERED",
    ]  # fmt: skip
    assert f["at"]["type"] == TS
    assert f["actor"]["type"] == "string"
    assert f["input_digest"]["type"] == ["null", "string"]
    assert f["details"]["type"] == {"type": "map", "values": "string"}


def test_dead_letter_matches_spec() -> None:
    f = _fields("DeadLetter")
    assert {k: v["type"] for k, v in f.items()} == {
        "source_topic": "string",
        "partition": "int",
        "offset": "long",
        "key": ["null", "bytes"],
        "payload": "bytes",
        "error_code": "string",
        "error_message": "string",
        "at": TS,
        "truncated": "boolean",
        "payload_length": ["null", "long"],
        "payload_sha256": ["null", "string"],
    }


def test_dead_letter_additions_are_backward_compatible_and_documented() -> None:
    fields = _raw("DeadLetter")["fields"]
    assert [f["name"] for f in fields[-3:]] == ["truncated", "payload_length", "payload_sha256"]
    assert [f["default"] for f in fields[-3:]] == [False, None, None]
    assert all(f["doc"].strip() for f in fields)
    # The previous version, kept where the codec accepts it from, is this one less the three.
    older = json.loads((SCHEMA_DIR / "history" / f"{NS}.DeadLetter.v1.avsc").read_text())
    assert [f["name"] for f in older["fields"]] == [f["name"] for f in fields[:-3]]
    assert [f["type"] for f in older["fields"]] == [f["type"] for f in fields[:-3]]


def test_nullable_fields_default_to_null_and_no_other_surprise_defaults() -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        for f in json.loads(path.read_text())["fields"]:
            if isinstance(f["type"], list) and f["type"][0] == "null":
                assert f["default"] is None, (path.name, f["name"])
            elif f["name"] in ("priority", "parameters", "trace", "truncated"):
                assert "default" in f
            else:
                assert "default" not in f, (path.name, f["name"])


def test_python_enums_mirror_avro_enums() -> None:
    assert [e.value for e in DataType] == _fields("Tensor")["datatype"]["type"]["symbols"]
    assert [e.value for e in Priority] == _fields("InferenceRequest")["priority"]["type"]["symbols"]
    assert [e.value for e in Status] == _fields("InferenceResult")["status"]["type"]["symbols"]
    assert [e.value for e in AuditType] == _fields("AuditEvent")["type"]["type"]["symbols"]
