"""The compiled Avro decoder refuses integers outside their Avro type's range, and varints
longer than 10 bytes, without looping over them."""

from __future__ import annotations

import time

import pytest

from streaminfer.schemas.binary import _read_long, _write_long, compile_schema

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


def varint(z: int) -> bytes:
    """The raw (not zig-zagged) varint of z >= 0, however large."""
    out = bytearray()
    while z > 0x7F:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


@pytest.mark.parametrize("n", [0, -1, 1, 63, -64, 64, 2**31, -(2**31) - 1, LONG_MIN, LONG_MAX])
def test_longs_round_trip_to_the_limits(n: int) -> None:
    data = _write_long(n) + b"tail"
    assert _read_long(data, 0) == (n, len(data) - 4)


def test_a_non_minimal_ten_byte_varint_within_range_is_accepted() -> None:
    assert _read_long(b"\x82" + b"\x80" * 8 + b"\x00", 0) == (1, 10)


@pytest.mark.parametrize(
    "data",
    [
        varint(2**64),  # zig-zag value one past the 64 bits
        varint(2**64 + 10),  # would read as 2**63 + 5
        varint(2**70 - 1),  # the 10th byte full
        b"\x80" * 10 + b"\x01",  # 11 bytes
        b"\xff" * 10_000 + b"\x01",  # a long run: refused at the 10th byte
    ],
    ids=["2**64", "2**64+10", "2**70-1", "11-bytes", "10000-bytes"],
)
def test_varints_beyond_int64_or_longer_than_ten_bytes_are_refused(data: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError, match="10 bytes or beyond int64"):
        _read_long(data, 0)
    assert time.perf_counter() - started < 0.01


_SCHEMA = {
    "type": "record",
    "name": "x.R",
    "fields": [
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "o", "type": ["null", "long"]},
        {"name": "a", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": "int"}},
    ],
}


def test_compiled_decoder_checks_every_int_and_long() -> None:
    codec = compile_schema(_SCHEMA)
    good = {"i": -(2**31), "l": LONG_MIN, "o": LONG_MAX, "a": [LONG_MAX, 3], "m": {"k": 2**31 - 1}}
    assert codec.decode(codec.encode(good)) == (good, len(codec.encode(good)))
    too_big = varint(2**64 + 2)  # a zig-zag value beyond 64 bits
    i, small_long, null_branch = b"\x00", b"\x00", b"\x00"
    for body in [
        varint(2**32) + small_long + null_branch + b"\x00\x00",  # int beyond int32
        i + too_big + null_branch + b"\x00\x00",  # long
        i + small_long + b"\x02" + too_big + b"\x00\x00",  # long in a union
        i + small_long + null_branch + b"\x02" + too_big + b"\x00\x00",  # long in an array
        i + small_long + null_branch + too_big + b"\x00\x00",  # an array's block count
        i + small_long + null_branch + b"\x00" + b"\x02\x02k" + varint(2**32) + b"\x00",  # map int
    ]:
        with pytest.raises(ValueError):
            codec.decode(body)
