"""Turns the ``inputs`` of an HTTP body into validated tensors, before anything is published:
the task's friendly form (declared in its model.yaml) or a list of Open Inference Protocol
tensors ``{"name", "shape", "datatype", "data"}``."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.config import NUMPY_DTYPES, ModelConfig
from models.errors import InvalidInput
from models.friendly import friendly_to_tensors, validate_tensors

from .errors import InvalidRequest


def is_oip_tensor_list(inputs: Any) -> bool:
    return (isinstance(inputs, list) and bool(inputs)
            and all(isinstance(t, dict) and "datatype" in t and "data" in t for t in inputs))


def oip_to_arrays(tensors: list[dict]) -> dict[str, np.ndarray]:
    """OIP JSON tensors to numpy; ``data`` may be flat or nested (row-major)."""
    arrays: dict[str, np.ndarray] = {}
    for position, tensor in enumerate(tensors):
        name = tensor.get("name")
        datatype = str(tensor.get("datatype", "")).upper()
        shape = tensor.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"input tensor #{position} has no name")
        if datatype not in NUMPY_DTYPES:
            raise InvalidRequest(f"input {name!r}: unknown datatype {datatype!r}",
                                 details={"allowed": sorted(NUMPY_DTYPES)})
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidRequest(f"input {name!r}: shape must be a list of non-negative integers")
        try:
            if datatype == "BYTES":
                flat = np.array([_text(v) for v in np.array(tensor["data"], dtype=object).ravel()], dtype=object)
            else:
                flat = np.asarray(tensor["data"], dtype=NUMPY_DTYPES[datatype]).ravel()
            arrays[name] = flat.reshape(shape)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequest(f"input {name!r}: data does not fit datatype {datatype} and shape {shape}: {exc}") from exc
    return arrays


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"BYTES items must be strings, got {type(value).__name__}")
    return value


def tensors_from_body(config: ModelConfig, inputs: Any) -> dict[str, np.ndarray]:
    """Validated input arrays for ``config``; raises :class:`InvalidRequest` with a clear message."""
    try:
        arrays = oip_to_arrays(inputs) if is_oip_tensor_list(inputs) else friendly_to_tensors(config, inputs)
        validate_tensors(config, arrays)
    except InvalidInput as exc:
        raise InvalidRequest(str(exc)) from exc
    return arrays
