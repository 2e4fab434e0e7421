"""models.signature against schemas: the copies the dependency rule makes us keep agree."""

from __future__ import annotations

import json

import numpy as np

from streaminfer.models.config import TASK_NAME_PATTERN
from streaminfer.models.signature import NUMPY_DTYPES, TensorSpec
from streaminfer.schemas.codec import SCHEMA_DIR
from streaminfer.schemas.tensors import DataType, Tensor
from streaminfer.schemas.topics import TASK_NAME_RE


def test_datatypes_are_the_avro_enum_symbols():
    schema = json.loads((SCHEMA_DIR / "io.streaminfer.v1.Tensor.avsc").read_text())
    (datatype,) = [field["type"] for field in schema["fields"] if field["name"] == "datatype"]
    assert list(NUMPY_DTYPES) == datatype["symbols"] == [member.value for member in DataType]


def test_numeric_dtypes_match_the_wire_format():
    """The model's array of a datatype becomes a Tensor of that datatype and comes back as it was."""
    for name, dtype in NUMPY_DTYPES.items():
        if name == "BYTES":
            continue
        array = np.array([0, 1, 1], dtype=dtype)
        tensor = Tensor.from_numpy("x", array)
        assert tensor.datatype == name
        back = tensor.to_numpy()
        assert back.dtype.kind == dtype.kind and back.dtype.itemsize == dtype.itemsize
        assert back.tolist() == array.tolist()


def test_task_name_patterns_are_one_pattern():
    assert TASK_NAME_PATTERN.pattern == TASK_NAME_RE.pattern
    for name in ("a", "text-embedding", "a" * 63, "a" * 64, "Text", "1task", "tiny\n", ""):
        assert bool(TASK_NAME_PATTERN.match(name)) == bool(TASK_NAME_RE.match(name))


def test_tensor_spec_to_dict():
    assert TensorSpec("x", "FP32", (2, -1)).to_dict() == {
        "name": "x",
        "datatype": "FP32",
        "shape": [2, -1],
    }
