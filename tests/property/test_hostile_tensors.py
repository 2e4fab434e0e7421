"""Property test: whatever a Tensor holds (any datatype, any ints as its shape, any data),
`to_numpy()` returns an array that matches it, or raises DecodeError, never anything else."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streaminfer.schemas.errors import DecodeError
from streaminfer.schemas.tensors import DataType, Tensor

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_ITEMSIZE = {
    DataType.BOOL: 1,
    DataType.UINT8: 1,
    DataType.INT8: 1,
    DataType.INT16: 2,
    DataType.INT32: 4,
    DataType.INT64: 8,
    DataType.FP16: 2,
    DataType.FP32: 4,
    DataType.FP64: 8,
}

dims = st.one_of(
    st.integers(0, 4),  # shapes that can match the data
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**31, 2**32, 2**59, 2**60, 2**61, 2**62, 2**63 - 1, 2**63, 2**64, -1]),
)
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.lists(st.sampled_from([0, 1, 2, 2**62]), min_size=30, max_size=70),  # near numpy's max
)
data = st.one_of(
    st.binary(max_size=64),
    st.lists(st.binary(max_size=8), max_size=16),
)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    datatype = draw(st.sampled_from(DataType))
    if draw(st.booleans()):  # arbitrary: mostly refused
        return Tensor(draw(st.text(max_size=8)), datatype, draw(shapes), draw(data))
    # A small shape with data that fits, or nearly (one item or byte more or less).
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    count = math.prod(shape) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    size = max(count, 0) * (1 if datatype is DataType.BYTES else _ITEMSIZE[datatype])
    if datatype is DataType.BYTES or draw(st.integers(0, 9)) == 0:  # sometimes the other kind
        payload = draw(st.lists(st.binary(max_size=8), min_size=size, max_size=size))
    else:
        payload = draw(st.binary(min_size=size, max_size=size))
    return Tensor("x", datatype, shape, payload)


@SETTINGS
@given(tensors())
def test_to_numpy_matches_the_tensor_or_raises_decode_error(tensor: Tensor) -> None:
    try:
        array = tensor.to_numpy()
    except DecodeError:
        event("DecodeError")
        return
    event("array")
    assert isinstance(array, np.ndarray)
    assert array.shape == tuple(tensor.shape)
    assert array.size == math.prod(tensor.shape)
    if tensor.datatype is DataType.BYTES:
        assert array.size == len(tensor.data) and array.dtype == object
    else:
        assert array.nbytes == len(tensor.data)
