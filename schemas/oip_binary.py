"""The binary tensor data extension of the Open Inference Protocol, as Triton's and KServe's
clients speak it, from both sides (the gateway reads requests and writes answers, the client the
other way round): a body of ``Inference-Header-Content-Length`` bytes of JSON, then the raw bytes
of each tensor whose parameters give a ``binary_data_size``, in the order of the header's
``inputs`` (a request) or ``outputs`` (an answer).

Raw tensor data is little-endian and row-major; a BYTES element is a 4-byte little-endian
length and then its bytes.

    DecodeError
    ├── FramingError        the body does not frame: its header length, JSON, sizes, bytes left over
    └── TensorBytesError    one tensor's binary_data_size or bytes are wrong
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from streaminfer.schemas.errors import DecodeError

__all__ = [
    "HEADER",
    "MEDIA_TYPE",
    "FramingError",
    "TensorBytesError",
    "fixed_bytes",
    "fixed_values",
    "frame",
    "pack_bytes",
    "split",
    "unpack_bytes",
]

HEADER = "Inference-Header-Content-Length"
MEDIA_TYPE = "application/octet-stream"
_LENGTH = struct.Struct("<I")


class FramingError(DecodeError):
    """The body is not a JSON header and the tensors' bytes after it; ``details`` says how."""

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class TensorBytesError(DecodeError):
    """A tensor's ``binary_data_size`` or its bytes do not make the tensor it says."""


def frame(header: Any, chunks: Iterable[bytes]) -> tuple[bytes, int]:
    """The body (``header`` as compact JSON, then ``chunks``) and its header's length."""
    head = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return head + b"".join(chunks), len(head)


def split(
    body: bytes, header_length: str | None, section: str, what: str = "body"
) -> tuple[Any, list[tuple[Any, bytes | None]]]:
    """The JSON header of ``body`` and, for each tensor of its ``section`` (a list, else none),
    that tensor and its bytes (None where it gives no ``binary_data_size``), in order.
    ``what``: the body's name in messages."""
    text = (header_length or "").strip()
    length = int(text) if text.isdigit() else -1
    if not 0 <= length <= len(body):
        raise FramingError(
            f"{HEADER} must be a byte count within the {what}'s {len(body)} bytes",
            {"header": HEADER},
        )
    try:
        header = json.loads(body[:length])
    except (ValueError, RecursionError) as exc:  # NOTE: UnicodeDecodeError is a ValueError
        raise FramingError(
            f"the {what}'s first {length} bytes ({HEADER}) are not a JSON object",
            {"header": HEADER},
        ) from exc
    tensors = header.get(section) if isinstance(header, dict) else None
    offset, found = length, []
    for tensor in tensors if isinstance(tensors, list) else ():
        size = _binary_size(tensor, section)
        if size is not None and offset + size > len(body):
            raise FramingError(
                f"{_label(tensor, section)}: binary_data_size {size} runs past the {what}'s end",
                {"missing_bytes": offset + size - len(body)},
            )
        found.append((tensor, None if size is None else body[offset : offset + size]))
        offset += size or 0
    if offset != len(body):
        raise FramingError(
            f"{len(body) - offset} bytes after the JSON header belong to no "
            f"{section.rstrip('s')}'s binary_data_size",
            {"extra_bytes": len(body) - offset},
        )
    return header, found


def _binary_size(tensor: Any, section: str) -> int | None:
    parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None and (type(size) is not int or size < 0):
        raise TensorBytesError(
            f"{_label(tensor, section)}: binary_data_size must be a non-negative integer"
        )
    return size


def _label(tensor: Any, section: str) -> str:
    """``input 'x'`` or ``output 'y'`` for messages (a hostile name cut short)."""
    name = tensor.get("name") if isinstance(tensor, dict) else None
    return f"{section.rstrip('s')} {str(name)[:80]!r}"


def fixed_bytes(array: np.ndarray) -> bytes:
    """A numeric tensor's raw bytes: little-endian, row-major."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def fixed_values(raw: bytes, dtype: np.dtype, label: str, datatype: str) -> np.ndarray:
    """Raw bytes as a flat array of ``dtype`` (native byte order); ``label`` and ``datatype``
    (the protocol's name of ``dtype``) for messages."""
    dtype = np.dtype(dtype)
    if len(raw) % dtype.itemsize:
        raise TensorBytesError(
            f"{label}: {len(raw)} bytes are not a whole number of {datatype} "
            f"elements ({dtype.itemsize} bytes each)"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


def pack_bytes(items: Iterable[bytes]) -> bytes:
    """BYTES elements as binary data: each a 4-byte little-endian length, then its bytes."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def unpack_bytes(raw: bytes, label: str) -> list[bytes]:
    """The BYTES elements of binary data; ``label`` names the tensor."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise TensorBytesError(f"{label}: a BYTES element's 4-byte length is cut off")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise TensorBytesError(
                f"{label}: a BYTES element of {size} bytes runs past binary_data_size"
            )
        items.append(raw[offset : offset + size])
        offset += size
    return items
