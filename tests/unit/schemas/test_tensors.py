"""Tensor <-> numpy conversion and the input digest."""

from __future__ import annotations

import array
import time

import numpy as np
import pytest

from streaminfer.schemas.errors import DecodeError, EncodeError, SchemaError
from streaminfer.schemas.tensors import DataType, Tensor, input_digest

# -- Tensor <-> numpy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        (np.bool_, DataType.BOOL),
        (np.uint8, DataType.UINT8),
        (np.int8, DataType.INT8),
        (np.int16, DataType.INT16),
        (np.int32, DataType.INT32),
        (np.int64, DataType.INT64),
        (np.float16, DataType.FP16),
        (np.float32, DataType.FP32),
        (np.float64, DataType.FP64),
    ],
)
def test_numeric_round_trip(dtype: type, datatype: DataType) -> None:
    array = (np.arange(24) % 5).astype(dtype).reshape(2, 3, 4)
    tensor = Tensor.from_numpy("x", array)
    assert tensor.datatype is datatype
    assert tensor.shape == [2, 3, 4]
    assert isinstance(tensor.data, bytes) and len(tensor.data) == array.nbytes
    back = tensor.to_numpy()
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_to_numpy_is_zero_copy_and_read_only() -> None:
    tensor = Tensor("x", DataType.FP32, [2], np.array([1.5, 2.5], "<f4").tobytes())
    array = tensor.to_numpy()
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(tensor.data, np.uint8))


def test_from_numpy_writes_little_endian_row_major() -> None:
    big = np.array([[1, 2], [3, 4]], dtype=">i4")
    tensor = Tensor.from_numpy("x", big.T)  # big-endian and not C-contiguous
    assert tensor.data == np.array([[1, 3], [2, 4]], dtype="<i4").tobytes()
    assert tensor.shape == [2, 2]


def test_scalar_and_empty_tensors() -> None:
    scalar = Tensor.from_numpy("s", np.float64(2.5))
    assert scalar.shape == [] and scalar.to_numpy() == 2.5
    empty = Tensor.from_numpy("e", np.zeros((0, 384), np.float32))
    assert empty.data == b"" and empty.to_numpy().shape == (0, 384)


@pytest.mark.parametrize(
    "array",
    [
        np.array(["héllo", "wörld"]),
        np.array(["héllo", b"w\xc3\xb6rld"], dtype=object),
        np.array([b"h\xc3\xa9llo", b"w\xc3\xb6rld"]),
    ],
)
def test_bytes_tensor_from_text(array: np.ndarray) -> None:
    tensor = Tensor.from_numpy("text", array)
    assert tensor.datatype is DataType.BYTES
    assert tensor.data == ["héllo".encode(), "wörld".encode()]
    back = tensor.to_numpy()
    assert back.dtype == object and back.tolist() == ["héllo", "wörld"]


def test_bytes_tensor_keeps_shape_and_binary_items() -> None:
    tensor = Tensor("b", DataType.BYTES, [2, 1], [b"ok", b"\xff\xfe"])
    back = tensor.to_numpy()
    assert back.shape == (2, 1)
    assert back[0, 0] == "ok" and back[1, 0] == b"\xff\xfe"  # not UTF-8: stays bytes


@pytest.mark.parametrize(
    "tensor",
    [
        Tensor("x", DataType.FP32, [3], b"\x00" * 10),
        Tensor("x", DataType.FP32, [3], [b"a", b"b", b"c"]),
        Tensor("x", DataType.INT64, [-1], b""),
        Tensor("x", DataType.BYTES, [3], [b"a"]),
        Tensor("x", DataType.BYTES, [1], b"a"),
        Tensor("x", "COMPLEX", [1], b"a"),  # type: ignore[arg-type]
    ],
)
def test_to_numpy_rejects_inconsistent_tensors(tensor: Tensor) -> None:
    with pytest.raises(DecodeError) as info:
        tensor.to_numpy()
    assert isinstance(info.value, SchemaError)


@pytest.mark.parametrize(
    "tensor",
    [
        Tensor("x", DataType.FP32, [2**62, 0], b""),  # was numpy's "array is too big"
        Tensor("x", DataType.FP32, [2**61, 0], b""),  # 2**63 bytes: one past intp
        Tensor("x", DataType.UINT8, [2**63, 0], b""),  # a dimension beyond int64
        Tensor("x", DataType.UINT8, [0, 2**64], b""),
        Tensor("x", DataType.BYTES, [2**60, 0], []),  # object items are 8 bytes to numpy
        Tensor("x", DataType.INT64, [2**40] * 64, b"\x00" * 8),  # a huge product
        Tensor("x", DataType.UINT8, [0, -(2**70)], b""),
        Tensor("x", DataType.UINT8, [1] * 65, b"\x00"),  # more dimensions than numpy has
        Tensor("x", DataType.UINT8, [1] * 1_000_000, b"\x00"),  # refused before any product
        Tensor("x", DataType.UINT8, [True, 1], b"\x00"),
        Tensor("x", DataType.UINT8, [1.0], b"\x00"),  # type: ignore[list-item]
        Tensor("x", DataType.UINT8, None, b"\x00"),  # type: ignore[arg-type]
        Tensor("x", DataType.UINT8, [1], None),  # type: ignore[arg-type]
        Tensor("x", DataType.BYTES, [2], [b"a", 7]),  # type: ignore[list-item]
        Tensor("x", DataType.BYTES, [2**62], [b"a"]),
        Tensor("x", ["FP32"], [1], b"\x00" * 4),  # type: ignore[arg-type]
        Tensor("x" * 10_000, DataType.FP32, [2], b""),
    ],
    ids=lambda t: f"{t.datatype}-{t.shape if len(str(t.shape)) < 40 else '...'}",
)
def test_to_numpy_refuses_hostile_tensors_with_decode_error_only(tensor: Tensor) -> None:
    started = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        tensor.to_numpy()
    assert time.perf_counter() - started < 0.1
    assert len(str(info.value)) < 300  # what a dead letter will carry


def test_to_numpy_takes_what_numpy_can_hold() -> None:
    assert Tensor("x", DataType.FP32, [2**60, 0], b"").to_numpy().shape == (2**60, 0)
    assert Tensor("x", DataType.BYTES, [0, 2**59], []).to_numpy().shape == (0, 2**59)
    assert Tensor("x", DataType.UINT8, [1] * 64, b"\x07").to_numpy().ndim == 64
    words = memoryview(array.array("i", [1, 2]))  # len() 2, 8 bytes
    assert Tensor("x", DataType.INT32, [2], words).to_numpy().tolist() == [1, 2]  # type: ignore[arg-type]
    items = [bytearray(b"a"), memoryview(b"\xc3\xa9"), "b", bytearray(b"\xff")]
    back = Tensor("x", DataType.BYTES, [4], items).to_numpy()  # type: ignore[arg-type]
    assert back.tolist() == ["a", "é", "b", b"\xff"]


@pytest.mark.parametrize(
    "array",
    [np.array([1, 2], np.uint16), np.array([1j]), np.array([1, "a", 3.0], dtype=object)],
)
def test_from_numpy_rejects_unsupported(array: np.ndarray) -> None:
    with pytest.raises(EncodeError):
        Tensor.from_numpy("x", array)


# -- input_digest ---------------------------------------------------------------------------


def _inputs() -> list[Tensor]:
    return [
        Tensor("text", DataType.BYTES, [2], [b"a", b"bc"]),
        Tensor("mask", DataType.INT64, [2], np.array([1, 0], "<i8").tobytes()),
    ]


def test_input_digest_is_stable_and_order_independent() -> None:
    digest = input_digest(_inputs())
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert input_digest(_inputs()) == digest
    assert input_digest(list(reversed(_inputs()))) == digest


@pytest.mark.parametrize(
    "changed",
    [
        Tensor("text2", DataType.BYTES, [2], [b"a", b"bc"]),
        Tensor("text", DataType.UINT8, [2], [b"a", b"bc"]),
        Tensor("text", DataType.BYTES, [2, 1], [b"a", b"bc"]),
        Tensor("text", DataType.BYTES, [2], [b"ab", b"c"]),
        Tensor("text", DataType.BYTES, [2], b"abc"),
    ],
)
def test_input_digest_sees_every_part(changed: Tensor) -> None:
    assert input_digest([changed, _inputs()[1]]) != input_digest(_inputs())
