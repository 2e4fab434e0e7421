"""Check tensors against a model's input signature: names, datatypes, shapes, batch size, values.

Numpy only: the gateway checks what it publishes with it, the worker what it reads from Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streaminfer.models.errors import InvalidInput
from streaminfer.models.features import ENTITY_KEY, check_entity_ids
from streaminfer.models.signature import NUMPY_DTYPES, TensorSpec

if TYPE_CHECKING:
    from streaminfer.models.config import ModelConfig

__all__ = ["validate_tensors"]


def validate_tensors(config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> None:
    """Raise InvalidInput unless ``tensors`` match the model's input signature exactly."""
    if not isinstance(tensors, Mapping):
        raise InvalidInput(f"inputs must be a mapping of tensor name to array, got {type(tensors)}")
    if config.features and list(tensors) == [ENTITY_KEY]:  # looked up by the worker
        check_entity_ids(tensors[ENTITY_KEY], config.max_batch_size)
        return
    expected = [spec.name for spec in config.inputs]
    missing = [name for name in expected if name not in tensors]
    extra = sorted(str(name) for name in tensors if name not in expected)
    if missing or extra:
        raise InvalidInput(
            f"task {config.task!r} expects input tensors {expected}; "
            f"missing {missing}, unexpected {extra}"
        )
    batch_sizes = {}
    for spec in config.inputs:
        array = tensors[spec.name]
        _check_array(config, spec, array)
        batch_sizes[spec.name] = array.shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise InvalidInput(f"input tensors disagree on the batch size: {batch_sizes}")


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if dim is None else str(dim) for dim in shape) + "]"


def _check_array(config: ModelConfig, spec: TensorSpec, array: Any) -> None:
    where = f"input {spec.name!r}"
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"{where}: expected a numpy array, got {type(array).__name__}")
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise InvalidInput(f"{where}: expected BYTES (strings), got dtype {array.dtype}")
    elif array.dtype != NUMPY_DTYPES[spec.datatype]:
        raise InvalidInput(
            f"{where}: expected datatype {spec.datatype} ({NUMPY_DTYPES[spec.datatype]}), "
            f"got {array.dtype}"
        )
    expected_shape = (None, *spec.shape)
    shape_ok = array.ndim == len(expected_shape) and all(
        want in (None, -1) or want == got
        for want, got in zip(expected_shape, array.shape, strict=True)
    )
    if not shape_ok:
        raise InvalidInput(
            f"{where}: expected shape {_shape_text(expected_shape)} (N items), "
            f"got {list(array.shape)}"
        )
    batch = array.shape[0]
    if not 1 <= batch <= config.max_batch_size:
        raise InvalidInput(
            f"{where}: batch of {batch} items, must be between 1 and {config.max_batch_size}"
        )
    if spec.datatype == "BYTES":
        for index, item in enumerate(array.reshape(-1)):
            _check_text(where, index, item)
    elif array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array.reshape(batch, -1)))[0][0])
        raise InvalidInput(f"{where}: item {bad} contains NaN or infinity")


def _check_text(where: str, index: int, item: Any) -> None:
    if isinstance(item, bytes | np.bytes_):
        try:
            item = bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{where}: item {index} is not valid UTF-8") from exc
    if not isinstance(item, str):
        raise InvalidInput(f"{where}: item {index} must be text, got {type(item).__name__}")
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, as JSON's "\ud800" allows
        raise InvalidInput(f"{where}: item {index} is not valid Unicode text") from exc
    if not item.strip():
        raise InvalidInput(f"{where}: item {index} is empty text")
