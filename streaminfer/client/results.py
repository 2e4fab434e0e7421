"""What the client hands back: :class:`Result`, and the decoding of the gateway's JSON tensors
(``/v1`` friendly outputs and ``/v2`` Open Inference Protocol tensors) into numpy arrays."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streaminfer.models.signature import NUMPY_DTYPES  # the contract's datatypes; BYTES as objects
from streaminfer.schemas.records import InferenceResult

from .errors import INVALID_RESPONSE, ClientError

__all__ = [
    "PENDING",
    "ModelInfo",
    "Result",
    "ResultError",
    "datatype_of",
    "decode_oip_outputs",
    "encode_oip_inputs",
]

PENDING = frozenset({"queued", "running"})
"""Statuses of a request that has no result yet."""

_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in NUMPY_DTYPES.items() if name != "BYTES"}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model that produced a result."""

    name: str | None
    version: str | None


@dataclass(frozen=True, slots=True)
class ResultError:
    """Why a request did not succeed (the result's ``error``)."""

    code: str
    message: str
    retriable: bool = False


@dataclass(slots=True)
class Result:
    """A request's status and, once done, its outputs.

    ``status`` is lower case as over HTTP: ``queued`` or ``running`` (no result yet), then
    ``succeeded``, ``failed``, ``expired``, ``cancelled`` or ``rejected``. ``outputs`` maps each
    output name to an array that always has the batch dimension first (``[N, 384]`` for N texts
    embedded, ``[N]`` for labels), with the datatype the task declares; BYTES outputs are object
    arrays of ``str``. ``timings`` has ``queued_ms``, ``inference_ms`` and ``total_ms``."""

    request_id: str
    task: str | None
    status: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    model: ModelInfo | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: ResultError | None = None
    batch_size: int | None = None
    attempts: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The JSON body the gateway answered with (empty for results read from Kafka)."""

    @property
    def is_done(self) -> bool:
        """Whether the request has its final status."""
        return self.status not in PENDING

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def raise_for_error(self) -> Result:
        """``self`` when it succeeded or is still pending; else ClientError with the result's error
        code (``INFERENCE_FAILED`` when it carries none)."""
        if self.status in PENDING or self.succeeded:
            return self
        code = self.error.code if self.error else "INFERENCE_FAILED"
        message = self.error.message if self.error else f"the request was {self.status}"
        raise ClientError(
            message, error_code=code, request_id=self.request_id, details={"status": self.status}
        )

    @classmethod
    def from_record(cls, record: InferenceResult) -> Result:
        """The result as read from a results topic (tensor names as the model's outputs)."""
        return cls(
            request_id=record.request_id,
            task=record.task,
            status=record.status.value.lower(),
            outputs={tensor.name: tensor.to_numpy() for tensor in record.outputs},
            model=ModelInfo(record.model_name, record.model_version),
            timings={
                "queued_ms": record.timings.queued_ms,
                "inference_ms": record.timings.inference_ms,
                "total_ms": record.timings.total_ms,
            },
            error=None
            if record.error is None
            else ResultError(record.error.code, record.error.message, record.error.retriable),
            batch_size=record.batch_size,
            attempts=record.attempts,
        )

    @classmethod
    def from_body(cls, body: Any, signature: Mapping[str, Any] | None = None) -> Result:
        """A ``/v1`` result or pending body; ``signature`` is the task's entry of ``GET /v1/tasks``
        (output datatypes and shapes). Without it, outputs are numpy's reading of the JSON."""
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            raise _invalid("a result body must be a JSON object with a request_id", body)
        status = body.get("status")
        if not isinstance(status, str):
            raise _invalid("the result has no status", body)
        outputs = body.get("outputs") or {}
        if not isinstance(outputs, dict):
            raise _invalid("the result's outputs are not a JSON object", body)
        model = body.get("model")
        error = body.get("error")
        try:
            return cls(
                request_id=body["request_id"],
                task=body.get("task"),
                status=status.lower(),
                outputs=decode_friendly_outputs(outputs, signature),
                model=ModelInfo(model.get("name"), model.get("version"))
                if isinstance(model, dict)
                else None,
                timings={
                    str(k): float(v)
                    for k, v in (body.get("timings") or {}).items()
                    # numbers only: feature_source ("cache" or "db") stays in raw
                    if isinstance(v, int | float) and not isinstance(v, bool)
                },
                error=None
                if not error
                else ResultError(
                    str(error["code"]),
                    str(error.get("message", "")),
                    bool(error.get("retriable", False)),
                ),
                batch_size=body.get("batch_size"),
                attempts=body.get("attempts"),
                raw=body,
            )
        except ClientError as exc:
            exc.body, exc.request_id = body, body["request_id"]
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"the result body cannot be read: {exc!r}", body) from exc


def _invalid(message: str, body: Any = None) -> ClientError:
    return ClientError(message, error_code=INVALID_RESPONSE, body=body)


def _dtype(datatype: Any, where: str) -> np.dtype:
    dtype = NUMPY_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise _invalid(f"{where}: unknown datatype {str(datatype)[:40]!r}")
    return dtype


def _array(value: Any, dtype: np.dtype, where: str) -> np.ndarray:
    """``value`` (nested JSON lists) as an array of ``dtype``; ragged or unfitting data is
    INVALID_RESPONSE. Floats the gateway sent as null (NaN, infinity) become NaN."""
    try:
        _check_items(value, dtype)
        array = np.array(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _invalid(f"{where}: data does not fit {dtype}: {exc}") from exc
    if dtype.kind == "O" and not all(isinstance(item, str) for item in array.reshape(-1)):
        raise _invalid(f"{where}: ragged BYTES data")  # numpy keeps ragged lists as objects
    return array


def _check_items(value: Any, dtype: np.dtype) -> None:
    """ValueError for an item numpy would convert but the datatype does not hold: text in a
    numeric tensor ("1.5"), a number in a BYTES one, null or a fraction in an integer one."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif dtype.kind == "O":
            if not isinstance(item, str):
                raise ValueError(f"BYTES items must be strings, not {type(item).__name__}")
        elif item is None:
            if dtype.kind != "f":
                raise ValueError("null in a tensor of whole numbers")
        elif not isinstance(item, int | float):  # bool is an int
            raise ValueError(f"{type(item).__name__} item in a numeric tensor")
        elif dtype.kind in "biu" and isinstance(item, float) and not item.is_integer():
            raise ValueError(f"{item!r} is not a whole number")


def decode_friendly_outputs(
    outputs: Mapping[str, Any], signature: Mapping[str, Any] | None
) -> dict[str, np.ndarray]:
    """``/v1`` outputs (one item unwrapped, several as a list per key) as arrays ``[N, *shape]``
    of the declared datatype, batch dimension restored."""
    specs: dict[str, Any] = {}
    friendly: dict[str, str] = {}
    if signature:
        specs = {
            spec.get("name"): spec
            for spec in signature.get("outputs") or ()
            if isinstance(spec, dict)
        }
        friendly = dict(signature.get("friendly_outputs") or {})
    decoded: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        spec = specs.get(friendly.get(key, key))
        where = f"output {str(key)[:80]!r}"
        if spec is None:  # a task the client knows no signature of, or an extra key
            decoded[key] = _loose(value)
            continue
        item_shape = spec.get("shape")
        if not isinstance(item_shape, list) or not all(isinstance(d, int) for d in item_shape):
            raise _invalid(f"{where}: the task's signature has no valid shape")
        array = _array(value, _dtype(spec.get("datatype"), where), where)
        if array.ndim == len(item_shape):  # one item, sent unwrapped
            array = array[np.newaxis]
        if array.ndim != len(item_shape) + 1 or any(
            want >= 0 and want != got for want, got in zip(item_shape, array.shape[1:], strict=True)
        ):
            raise _invalid(f"{where}: shape {list(array.shape)} does not match [N, *{item_shape}]")
        decoded[key] = array
    return decoded


def _loose(value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError:  # ragged, or objects (e.g. a list of dicts)
        array = np.empty(len(value) if isinstance(value, list) else 1, dtype=object)
        array[:] = value if isinstance(value, list) else [value]
        return array


def decode_oip_outputs(body: Any) -> dict[str, np.ndarray]:
    """The ``outputs`` of a ``/v2`` infer answer: ``{name, datatype, shape, data}`` tensors, data
    flat or nested row-major; BYTES with ``parameters.content_type`` ``base64`` become bytes."""
    tensors = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(tensors, list):
        raise _invalid("the infer answer has no outputs list", body)
    arrays: dict[str, np.ndarray] = {}
    for position, tensor in enumerate(tensors):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise _invalid(f"output #{position} is not a named tensor", body)
        name, shape = tensor["name"], tensor.get("shape")
        where = f"output {name[:80]!r}"
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _invalid(f"{where}: shape must be a list of non-negative integers", body)
        dtype = _dtype(tensor.get("datatype"), where)
        data = tensor.get("data")
        parameters = tensor.get("parameters") or {}
        if (
            dtype.kind == "O"
            and isinstance(parameters, dict)
            and parameters.get("content_type") == "base64"
        ):
            data = _unbase64(data, where)
        array = (
            _array(data, dtype, where)
            if dtype.kind != "O" or not _all_bytes(data)
            else _objects(data)
        )
        if array.size != math.prod(shape):
            raise _invalid(f"{where}: {array.size} values do not fill shape {shape}", body)
        arrays[name] = array.reshape(shape)
    return arrays


def _unbase64(data: Any, where: str) -> list:
    if not isinstance(data, list):
        raise _invalid(f"{where}: base64 data must be a list")
    try:
        return [
            base64.b64decode(item, validate=True) if isinstance(item, str) else item
            for item in data
        ]
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"{where}: not valid base64") from exc


def _all_bytes(data: Any) -> bool:
    return isinstance(data, list) and any(isinstance(item, bytes) for item in data)


def _objects(items: list) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def datatype_of(array: np.ndarray) -> str:
    """The contract datatype of a numpy array (str, bytes and object arrays are BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    name = _BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if name is None:
        raise ValueError(
            f"numpy dtype {array.dtype} has no datatype in the contract; "
            f"use one of {sorted(NUMPY_DTYPES)}"
        )
    return name


def encode_oip_inputs(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``{name: array-like}`` as ``/v2`` JSON input tensors (flat row-major data)."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("inputs must be a non-empty mapping of tensor name to array")
    tensors = []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array)
        flat = array.reshape(-1).tolist()
        if datatype == "BYTES":
            flat = [item.decode("utf-8") if isinstance(item, bytes) else item for item in flat]
            if not all(isinstance(item, str) for item in flat):
                raise ValueError(f"input {name!r}: BYTES items must be str or UTF-8 bytes")
        tensors.append(
            {"name": str(name), "shape": list(array.shape), "datatype": datatype, "data": flat}
        )
    return tensors
