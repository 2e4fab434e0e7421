"""The binary tensor data extension of the Open Inference Protocol, client side: a body of
``Inference-Header-Content-Length`` bytes of JSON, then each binary tensor's raw bytes in order
(little-endian, row-major; a BYTES element is a 4-byte little-endian length and its bytes)."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import INVALID_RESPONSE, ClientError
from .results import NUMPY_DTYPES, datatype_of, decode_oip_outputs

__all__ = ["HEADER", "MEDIA_TYPE", "binary_request", "split_answer"]

HEADER = "Inference-Header-Content-Length"
MEDIA_TYPE = "application/octet-stream"
_LENGTH = struct.Struct("<I")


def _invalid(message: str) -> ClientError:
    return ClientError(message, error_code=INVALID_RESPONSE)


def _raw(name: str, array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    chunks = []
    for item in array.reshape(-1).tolist():
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, bytes):
            raise ValueError(f"input {name!r}: BYTES items must be str or bytes")
        chunks.append(_LENGTH.pack(len(item)) + item)
    return b"".join(chunks)


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
    head = json.dumps({**header, "inputs": tensors}, separators=(",", ":")).encode()
    headers = {"Content-Type": MEDIA_TYPE, HEADER: str(len(head))}
    return head + b"".join(chunks), headers


def split_answer(content: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The output tensors of a binary infer answer: those with ``binary_data_size`` from the bytes
    after the JSON header, the others from their JSON ``data``; in the answer's order."""
    text = (header_length or "").strip()
    length = int(text) if text.isdigit() else -1
    if not 0 <= length <= len(content):
        raise _invalid(f"{HEADER} {header_length!r} is not a byte count within the answer")
    try:
        header = json.loads(content[:length])
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"the answer's first {length} bytes are not JSON") from exc
    tensors = header.get("outputs") if isinstance(header, dict) else None
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        raise _invalid("the binary answer's header has no outputs list")
    offset, arrays = length, {}
    for tensor in tensors:
        parameters = tensor.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            arrays.update(decode_oip_outputs({"outputs": [tensor]}))
            continue
        if type(size) is not int or size < 0 or offset + size > len(content):
            raise _invalid(
                f"output {str(tensor.get('name'))[:80]!r}: binary_data_size {size!r} "
                f"does not fit the {len(content) - offset} bytes left"
            )
        arrays[str(tensor.get("name"))] = _array(tensor, content[offset : offset + size])
        offset += size
    if offset != len(content):
        raise _invalid(f"{len(content) - offset} bytes after the outputs' binary data")
    return arrays


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
    if dtype.kind != "O":
        if len(raw) != count * dtype.itemsize:
            raise _invalid(f"output {name!r}: {len(raw)} bytes do not hold {datatype} {shape}")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    items, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise _invalid(f"output {name!r}: a BYTES element's length is cut off")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise _invalid(f"output {name!r}: a BYTES element runs past its data")
        item = raw[offset : offset + size]
        offset += size
        try:
            items.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            items.append(item)  # binary payloads stay bytes, as the codec keeps them
    if len(items) != count:
        raise _invalid(f"output {name!r}: {len(items)} BYTES elements do not fill shape {shape}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)
