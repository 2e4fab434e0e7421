"""Tensors: the `Tensor` record, its numpy conversion, and the digest of a set of inputs."""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from streaminfer.schemas.errors import DecodeError, EncodeError

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
_OBJECT_ITEMSIZE = np.dtype(object).itemsize

# NOTE: numpy's own limits, checked before it sees a shape so that it never raises: at most
# 64 dimensions (32 before numpy 2), and the product of the non-zero dimensions times the
# item size within intp, even for an empty array (`[2**62, 0]` floats is "too big").
_MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_MAX_NBYTES = int(np.iinfo(np.intp).max)


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
        return bytes(item)  # binary payloads (e.g. images) stay bytes rather than failing
    except AttributeError:
        if isinstance(item, memoryview):
            return _item_text(item.tobytes())
        if isinstance(item, str):
            return item
        raise DecodeError(f"BYTES tensor items must be bytes, not {type(item).__name__}") from None


def _label(name: object) -> str:
    return repr(name)[:80]  # names come from the event: keep messages (and dead letters) small


def _shape_text(shape: list[int]) -> str:
    # Only for dimensions already checked to be ints within int64.
    return str(shape) if len(shape) <= 8 else f"[{', '.join(map(str, shape[:8]))}, ...]"


def _element_count(name: object, shape: Any, itemsize: int) -> int:
    """The element count of `shape`, or DecodeError where numpy could not make an array of
    that shape with `itemsize`-byte items. Bounded work whatever `shape` holds."""
    if not isinstance(shape, list | tuple):
        raise DecodeError(f"tensor {_label(name)}: shape is a {type(shape).__name__}, not a list")
    if len(shape) > _MAX_DIMS:
        raise DecodeError(
            f"tensor {_label(name)}: {len(shape)} dimensions, numpy supports {_MAX_DIMS}"
        )
    count = 1
    nbytes = itemsize  # over the non-zero dimensions, as numpy counts
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int):
            raise DecodeError(f"tensor {_label(name)}: dimension of type {type(d).__name__}")
        if d < 0:
            raise DecodeError(f"tensor {_label(name)}: negative dimension")
        if d:
            nbytes *= d
            if nbytes > _MAX_NBYTES:
                raise DecodeError(f"tensor {_label(name)}: shape too large for numpy")
        count *= d
    return count


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
        object array of str (items that are not valid UTF-8 stay bytes).

        Raises DecodeError, and only that, for anything numpy could not hold or that does
        not match the data present, checked before anything is allocated.
        """
        data = self.data
        try:
            datatype = _DATATYPES.get(self.datatype)
        except TypeError:  # unhashable
            datatype = None
        if datatype is None:
            raise DecodeError(
                f"tensor {_label(self.name)}: unknown datatype {_label(self.datatype)}"
            )
        if datatype is DataType.BYTES:
            count = _element_count(self.name, self.shape, _OBJECT_ITEMSIZE)
            if not isinstance(data, list) or len(data) != count:
                n = len(data) if isinstance(data, list) else "raw bytes"
                raise DecodeError(
                    f"tensor {_label(self.name)}: BYTES shape {_shape_text(self.shape)} needs "
                    f"{count} items, got {n}"
                )
            out = np.empty(count, dtype=object)
            out[:] = [_item_text(item) for item in data]
            return out.reshape(self.shape)
        dtype = _NUMPY_DTYPES[datatype]
        count = _element_count(self.name, self.shape, dtype.itemsize)
        if isinstance(data, memoryview):
            if not data.c_contiguous:
                raise DecodeError(f"tensor {_label(self.name)}: data is not contiguous")
            size = data.nbytes  # len() counts items, not bytes, for other formats
        elif isinstance(data, bytes | bytearray):
            size = len(data)
        else:
            raise DecodeError(f"tensor {_label(self.name)}: {datatype} data must be raw bytes")
        expected = count * dtype.itemsize
        if size != expected:
            raise DecodeError(
                f"tensor {_label(self.name)}: {datatype} shape {_shape_text(self.shape)} needs "
                f"{expected} bytes, got {size}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(self.shape)

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
