"""The OIP binary tensor data framing both the gateway and the client speak: what one side
frames, the other splits back; bodies that do not frame are errors, never a wrong tensor."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from streaminfer.schemas import oip_binary as wire
from streaminfer.schemas.errors import DecodeError


def test_a_framed_body_splits_back_into_its_tensors() -> None:
    x = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=np.float32)
    texts = [b"h\xc3\xa9llo", b"", b"\xff binary"]
    header = {
        "id": "r1",
        "outputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": x.nbytes},
            },
            {"name": "json", "datatype": "INT64", "shape": [1], "data": [7]},
            {
                "name": "t",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"binary_data_size": 4 * 3 + 14},
            },
        ],
    }
    body, length = wire.frame(header, [wire.fixed_bytes(x), wire.pack_bytes(texts)])
    assert json.loads(body[:length]) == header
    split_header, tensors = wire.split(body, str(length), "outputs")
    assert split_header == header
    assert [raw is None for _, raw in tensors] == [False, True, False]
    (_, raw_x), _, (_, raw_t) = tensors
    assert (
        wire.fixed_values(raw_x, np.float32, "output 'x'", "FP32").reshape(2, 2).tolist()
        == x.tolist()
    )
    assert wire.unpack_bytes(raw_t, "output 't'") == texts


def test_the_wire_format_is_little_endian_with_4_byte_lengths() -> None:
    assert wire.fixed_bytes(np.array([1], dtype=">i4")) == b"\x01\x00\x00\x00"
    assert wire.pack_bytes([b"ab", b""]) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    values = wire.fixed_values(b"\x01\x00\x00\x00\x02\x00\x00\x00", np.int32, "input 'x'", "INT32")
    assert values.dtype == np.int32 and values.tolist() == [1, 2]


def sized(size, **extra) -> dict:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "parameters": {"binary_data_size": size}, **extra}
        ]
    }


def framed(header, tail: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + tail, str(len(head))


@pytest.mark.parametrize(
    "body, length, words, details",
    [
        (b"{}", "9", "within the body", {"header": wire.HEADER}),
        (b"{}", None, "within the body", {"header": wire.HEADER}),
        (b"{}", "-1", "within the body", {"header": wire.HEADER}),
        (b"\xff\xfe{}", "2", "not a JSON object", {"header": wire.HEADER}),
        (b"[" * 5000, "5000", "not a JSON object", {"header": wire.HEADER}),
        (*framed(sized(12), b"\0" * 8), "runs past the body's end", {"missing_bytes": 4}),
        (*framed(sized(4), b"\0" * 6), "belong to no input's", {"extra_bytes": 2}),
        (*framed({"inputs": "not a list"}, b"\0"), "belong to no input's", {"extra_bytes": 1}),
    ],
)
def test_a_body_that_does_not_frame_is_a_framing_error(body, length, words, details) -> None:
    with pytest.raises(wire.FramingError, match=words) as caught:
        wire.split(body, length, "inputs")
    assert caught.value.details == details
    assert isinstance(caught.value, DecodeError)


@pytest.mark.parametrize("size", [-1, 1.5, "12", True])
def test_a_binary_data_size_that_is_no_byte_count_is_a_tensor_error(size) -> None:
    with pytest.raises(wire.TensorBytesError, match="non-negative integer"):
        wire.split(*framed(sized(size), b""), "inputs")


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"\x01\x00", "cut off"),
        (struct.pack("<I", 9) + b"ab", "runs past"),
        (struct.pack("<I", 1) + b"a" + b"\x00", "cut off"),
    ],
)
def test_garbled_bytes_elements_are_a_tensor_error(raw, words) -> None:
    with pytest.raises(wire.TensorBytesError, match=words):
        wire.unpack_bytes(raw, "input 'text'")


def test_bytes_that_are_no_whole_number_of_elements_are_a_tensor_error() -> None:
    with pytest.raises(wire.TensorBytesError, match="10 bytes are not a whole number of FP32"):
        wire.fixed_values(b"\0" * 10, np.float32, "input 'x'", "FP32")


def test_frame_refuses_nan_as_json_does() -> None:
    with pytest.raises(ValueError):
        wire.frame({"parameters": {"x": float("nan")}}, [])
