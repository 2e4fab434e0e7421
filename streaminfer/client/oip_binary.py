"""The binary tensor data extension of the Open Inference Protocol, client side (the wire format
is :mod:`streaminfer.schemas.oip_binary`): requests whose inputs travel as binary data, and
binary answers read back into numpy arrays."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from streaminfer.schemas.errors import DecodeError
from streaminfer.schemas.oip_binary import (
    HEADER,
    MEDIA_TYPE,
    fixed_bytes,
    fixed_values,
    frame,
    pack_bytes,
    split,
    unpack_bytes,
)

from .errors import INVALID_RESPONSE, ClientError
from .results import NUMPY_DTYPES, datatype_of, decode_oip_outputs

__all__ = ["HEADER", "MEDIA_TYPE", "binary_request", "split_answer"]


def _invalid(message: str) -> ClientError:
    return ClientError(message, error_code=INVALID_RESPONSE)


def _raw(name: str, array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return fixed_bytes(array)
    items = []
    for item in array.reshape(-1).tolist():
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, bytes):
            raise ValueError(f"input {name!r}: BYTES items must be str or bytes")
        items.append(item)
    return pack_bytes(items)


def binary_request(
    inputs: Mapping[str, Any], header: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an infer request whose inputs travel as binary data; ``header``
    holds the rest of the JSON (outputs, parameters)."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("inputs must be a non-empty mapping of tensor name to array")
    tensors, chunks = [], []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array)
        raw = _raw(str(name), array, datatype)
        tensors.append(
            {
                "name": str(name),
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    body, length = frame({**header, "inputs": tensors}, chunks)
    return body, {"Content-Type": MEDIA_TYPE, HEADER: str(length)}


def split_answer(content: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The output tensors of a binary infer answer: those with ``binary_data_size`` from the bytes
    after the JSON header, the others from their JSON ``data``; in the answer's order."""
    try:
        header, tensors = split(content, header_length, "outputs", what="answer")
        outputs = header.get("outputs") if isinstance(header, dict) else None
        if not isinstance(outputs, list) or not all(isinstance(t, dict) for t in outputs):
            raise _invalid("the binary answer's header has no outputs list")
        arrays = {}
        for tensor, raw in tensors:
            if raw is None:
                arrays.update(decode_oip_outputs({"outputs": [tensor]}))
            else:
                arrays[str(tensor.get("name"))] = _array(tensor, raw)
        return arrays
    except DecodeError as exc:  # the answer does not frame, or a tensor's bytes are wrong
        raise _invalid(str(exc)) from None


def _array(tensor: dict[str, Any], raw: bytes) -> np.ndarray:
    name, shape, datatype = (
        str(tensor.get("name"))[:80],
        tensor.get("shape"),
        tensor.get("datatype"),
    )
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _invalid(f"output {name!r}: shape must be a list of non-negative integers")
    dtype = NUMPY_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise _invalid(f"output {name!r}: unknown datatype {str(datatype)[:40]!r}")
    count = math.prod(shape)
    label = f"output {name!r}"
    if dtype.kind != "O":
        values = fixed_values(raw, dtype, label, datatype)
        if values.size != count:
            raise _invalid(f"output {name!r}: {len(raw)} bytes do not hold {datatype} {shape}")
        return values.reshape(shape)
    items = []
    for item in unpack_bytes(raw, label):
        try:
            items.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            items.append(item)  # binary payloads stay bytes, as the codec keeps them
    if len(items) != count:
        raise _invalid(f"output {name!r}: {len(items)} BYTES elements do not fill shape {shape}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)
