"""The binary tensor data extension of the Open Inference Protocol, as Triton's and KServe's
clients speak it: a body of ``Inference-Header-Content-Length`` bytes of JSON, then the raw
bytes of each input whose parameters give a ``binary_data_size``, in the order of ``inputs``;
an answer the same way for outputs asked as binary.

Raw tensor data is little-endian and row-major; a BYTES element is a 4-byte little-endian
length and then its bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from starlette.responses import Response

from streaminfer.models.signature import NUMPY_DTYPES

from .errors import InvalidRequest

HEADER = "Inference-Header-Content-Length"
MEDIA_TYPE = "application/octet-stream"
_LENGTH = struct.Struct("<I")


def split_request(body: bytes, header_length: str) -> Any:
    """The request's JSON header, each binary input's ``data`` filled in from the bytes after it."""
    length = int(header_length) if header_length.strip().isdigit() else -1
    if not 0 <= length <= len(body):
        raise InvalidRequest(f"{HEADER} must be a byte count within the body's {len(body)} bytes",
                             status=400, details={"header": HEADER})
    try:
        header = json.loads(body[:length])
    except (ValueError, RecursionError) as exc:  # NOTE: UnicodeDecodeError is a ValueError
        raise InvalidRequest(f"the body's first {length} bytes ({HEADER}) are not a JSON object",
                             status=400, details={"header": HEADER}) from exc
    offset = length
    inputs = header.get("inputs") if isinstance(header, dict) else None
    for tensor in inputs if isinstance(inputs, list) else ():
        size = _binary_size(tensor)
        if size is None:
            continue
        name = tensor.get("name")
        if "data" in tensor:
            raise InvalidRequest(f"input {name!r} has both data and parameters.binary_data_size")
        if offset + size > len(body):
            raise InvalidRequest(f"input {name!r}: binary_data_size {size} runs past the body's end",
                                 status=400, details={"missing_bytes": offset + size - len(body)})
        tensor["data"] = _values(name, str(tensor.get("datatype", "")).upper(), body[offset:offset + size])
        offset += size
    if offset != len(body):
        raise InvalidRequest(f"{len(body) - offset} bytes after the JSON header belong to no input's "
                             "binary_data_size", status=400, details={"extra_bytes": len(body) - offset})
    return header


def _binary_size(tensor: Any) -> int | None:
    parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise InvalidRequest(f"input {tensor.get('name')!r}: binary_data_size must be a non-negative integer")
    return size


def _values(name: Any, datatype: str, raw: bytes) -> list:
    """Raw tensor bytes as the flat JSON ``data`` the rest of the gateway validates."""
    if datatype == "BYTES":
        return [_text(name, item) for item in _bytes_items(name, raw)]
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidRequest(f"input {name!r}: unknown datatype {datatype!r}", details={"allowed": sorted(NUMPY_DTYPES)})
    dtype = dtype.newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise InvalidRequest(f"input {name!r}: {len(raw)} bytes are not a whole number of {datatype} "
                             f"elements ({dtype.itemsize} bytes each)")
    return np.frombuffer(raw, dtype=dtype).tolist()


def _bytes_items(name: Any, raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise InvalidRequest(f"input {name!r}: a BYTES element's 4-byte length is cut off")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise InvalidRequest(f"input {name!r}: a BYTES element of {size} bytes runs past binary_data_size")
        items.append(raw[offset:offset + size])
        offset += size
    return items


def _text(name: Any, item: bytes) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"input {name!r}: BYTES elements must be UTF-8 text") from exc


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """An output tensor as binary data."""
    if datatype == "BYTES":
        items = [i if isinstance(i, bytes) else str(i).encode() for i in array.ravel().tolist()]
        return b"".join(_LENGTH.pack(len(i)) + i for i in items)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def binary_response(header: dict, chunks: list[bytes], headers: dict[str, str] | None = None) -> Response:
    """The JSON header, then the binary outputs' bytes in the order of ``header["outputs"]``."""
    head = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(head + b"".join(chunks), media_type=MEDIA_TYPE,
                    headers={**(headers or {}), HEADER: str(len(head))})
