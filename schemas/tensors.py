"""Tensors: the `Tensor` record, its numpy conversion, and the digest of a set of inputs."""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from schemas.errors import DecodeError, EncodeError

logger = logging.getLogger(__name__)

__all__ = ["DataType", "Tensor", "input_digest"]


# StrEnum: members are str (json.dumps, fastavro and str() give the bare Avro symbol).
class DataType(StrEnum):
    BOOL = "BOOL"
    UINT8 = "UINT8"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


# Plain dict lookup: Enum.__call__ is several times slower on the decode path.
_DATATYPES = DataType._value2member_map_

# Explicit little-endian dtypes: the wire format is little-endian whatever the host.
_NUMPY_DTYPES: dict[DataType, np.dtype] = {
    DataType.BOOL: np.dtype("?"),
    DataType.UINT8: np.dtype("u1"),
    DataType.INT8: np.dtype("i1"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.FP16: np.dtype("<f2"),
    DataType.FP32: np.dtype("<f4"),
    DataType.FP64: np.dtype("<f8"),
}
_DATATYPE_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in _NUMPY_DTYPES.items()}


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise EncodeError(f"BYTES tensor items must be str or bytes, not {type(item).__name__}")


def _item_text(item: bytes) -> str | bytes:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return item  # binary payloads (e.g. images) stay bytes rather than failing


@dataclass(slots=True)
class Tensor:
    """A named n-dimensional tensor; see `io.streaminfer.v1.Tensor.avsc`."""

    AVRO_NAME: ClassVar[str] = "io.streaminfer.v1.Tensor"

    name: str
    datatype: DataType
    shape: list[int]
    data: bytes | list[bytes]

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray) -> Tensor:
        """Numeric arrays become little-endian row-major bytes; str/bytes/object arrays
        become BYTES tensors with one UTF-8 item per element."""
        arr = np.asarray(array)
        shape = [int(d) for d in arr.shape]
        if arr.dtype.kind in "OUS":
            try:
                items = [_item_bytes(x) for x in arr.reshape(-1).tolist()]
            except UnicodeEncodeError as exc:
                raise EncodeError(f"tensor {name!r}: text is not encodable as UTF-8") from exc
            return cls(name, DataType.BYTES, shape, items)
        datatype = _DATATYPE_BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
        if datatype is None:
            raise EncodeError(f"tensor {name!r}: numpy dtype {arr.dtype} has no Avro datatype")
        # tobytes() is C (row-major) order even for non-contiguous views.
        data = arr.astype(_NUMPY_DTYPES[datatype], copy=False).tobytes()
        return cls(name, datatype, shape, data)

    def to_numpy(self) -> np.ndarray:
        """Numeric tensors as a read-only zero-copy view of `data`; BYTES tensors as an
        object array of str (items that are not valid UTF-8 stay bytes)."""
        shape = self.shape
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise DecodeError(f"tensor {self.name!r}: invalid shape {shape!r}")
        count = math.prod(shape)
        data = self.data
        datatype = _DATATYPES.get(self.datatype)
        if datatype is None:
            raise DecodeError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}")
        if datatype is DataType.BYTES:
            if not isinstance(data, list) or len(data) != count:
                n = len(data) if isinstance(data, list) else "raw bytes"
                raise DecodeError(
                    f"tensor {self.name!r}: BYTES shape {shape} needs {count} items, got {n}"
                )
            out = np.empty(count, dtype=object)
            out[:] = [_item_text(item) for item in data]
            return out.reshape(shape)
        dtype = _NUMPY_DTYPES[datatype]
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"tensor {self.name!r}: {datatype} data must be raw bytes")
        expected = count * dtype.itemsize
        if len(data) != expected:
            raise DecodeError(
                f"tensor {self.name!r}: {datatype} shape {shape} needs {expected} bytes, "
                f"got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def to_avro(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datatype": self.datatype,
            "shape": self.shape,
            "data": self.data,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Tensor:
        return cls(d["name"], _DATATYPES[d["datatype"]], d["shape"], d["data"])


def _pack_len(n: int) -> bytes:
    return struct.pack("<Q", n)


def input_digest(inputs: Iterable[Tensor]) -> str:
    """SHA-256 (hex) over the names, datatypes, shapes and data of `inputs`.

    Every part is length-prefixed so no two different inputs share a digest. Tensors are
    taken in name order: models match inputs by name, so list order does not matter.
    """
    h = hashlib.sha256()
    for tensor in sorted(inputs, key=lambda t: t.name):
        name = tensor.name.encode("utf-8")
        datatype = str(tensor.datatype).encode("ascii")
        h.update(_pack_len(len(name)) + name + _pack_len(len(datatype)) + datatype)
        h.update(
            _pack_len(len(tensor.shape)) + struct.pack(f"<{len(tensor.shape)}q", *tensor.shape)
        )
        data = tensor.data
        if isinstance(data, list):
            h.update(b"L" + _pack_len(len(data)))
            for item in data:
                h.update(_pack_len(len(item)))
                h.update(item)
        else:
            h.update(b"B" + _pack_len(len(data)))
            h.update(data)
    return h.hexdigest()
