"""A model's signature: the datatypes a tensor may have and one named tensor of a signature.

Plain data, numpy only: everything else in ``models/`` builds on it, and so does the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NUMPY_DTYPES", "TensorSpec"]

# NOTE: schemas/tensors.py keeps its own table of these datatypes: models/ and schemas/ import
# nothing of each other (tests/unit/test_import_graph.py), and the two say different things.
# This one is the in-memory numpy dtype a model takes and gives (native byte order, BYTES as
# Python objects); the schema's is the wire format (explicit little-endian, no BYTES).
# tests/unit/models/test_signature.py checks that they name the same datatypes and item sizes.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model signature; ``shape`` is per item, without the batch dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
