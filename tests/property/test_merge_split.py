"""Splitting the merged batch output gives back exactly one result per request, in order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streaminfer.streams.merging import merge_inputs, split_outputs


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12),
    width=st.integers(min_value=1, max_value=4),
)
def test_split_of_merge_is_identity(sizes, width):
    requests = []
    counter = 0
    for size in sizes:
        values = np.arange(counter, counter + size * width, dtype=np.float32).reshape(size, width)
        texts = np.array([f"t{counter + i}" for i in range(size)], dtype=object)
        requests.append({"x": values, "text": texts})
        counter += size * width
    merged = merge_inputs(requests)
    assert merged["x"].shape == (sum(sizes), width)
    # an identity "model": outputs are the inputs
    parts = split_outputs(merged, sizes)
    assert len(parts) == len(requests)
    for part, request in zip(parts, requests, strict=True):
        assert np.array_equal(part["x"], request["x"])
        assert list(part["text"]) == list(request["text"])


def test_split_rejects_wrong_first_dimension():
    import pytest

    with pytest.raises(ValueError):
        split_outputs({"y": np.zeros((3, 2))}, [1, 1])
