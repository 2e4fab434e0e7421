"""Turns the ``inputs`` of an HTTP body into validated tensors, before anything is published:
the task's friendly form (declared in its model.yaml) or a list of Open Inference Protocol
tensors ``{"name", "shape", "datatype", "data"}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streaminfer.models.config import ModelConfig
from streaminfer.models.errors import InvalidInput
from streaminfer.models.friendly import friendly_to_tensors
from streaminfer.models.signature import NUMPY_DTYPES
from streaminfer.models.validation import validate_tensors

from .errors import InvalidRequest, PayloadTooLarge


def is_oip_tensor_list(inputs: Any) -> bool:
    return (
        isinstance(inputs, list)
        and bool(inputs)
        and all(isinstance(t, dict) and "datatype" in t and "data" in t for t in inputs)
    )


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
            raise InvalidRequest(
                f"input {name!r}: unknown datatype {datatype!r}",
                details={"allowed": sorted(NUMPY_DTYPES)},
            )
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidRequest(f"input {name!r}: shape must be a list of non-negative integers")
        try:
            if datatype == "BYTES":
                flat = np.array(
                    [_text(v) for v in np.array(tensor["data"], dtype=object).ravel()], dtype=object
                )
            else:
                flat = np.asarray(tensor["data"], dtype=NUMPY_DTYPES[datatype]).ravel()
            arrays[name] = flat.reshape(shape)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequest(
                f"input {name!r}: data does not fit datatype {datatype} and shape {shape}: {exc}"
            ) from exc
    return arrays


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"BYTES items must be strings, got {type(value).__name__}")
    return value


def tensors_from_body(config: ModelConfig, inputs: Any) -> dict[str, np.ndarray]:
    """Validated input arrays for ``config``; raises :class:`InvalidRequest` with a clear message."""
    try:
        arrays = (
            oip_to_arrays(inputs)
            if is_oip_tensor_list(inputs)
            else friendly_to_tensors(config, inputs)
        )
        validate_tensors(config, arrays)
    except InvalidInput as exc:
        raise InvalidRequest(str(exc)) from exc
    return arrays


@dataclass(frozen=True)
class InputLimits:
    """Size limits checked on the JSON before anything is converted or published."""

    max_text_chars: int = 20_000
    max_image_bytes: int = 512 * 1024
    max_parameters: int = 32
    max_json_depth: int = 64
    """Nesting of the whole body (its own object is level 1); the deepest built-in input,
    a batch of 8x8 pixels, is 4."""


def check_limits(config: ModelConfig, inputs: Any, parameters: dict, limits: InputLimits) -> None:
    """400 for inputs nested past the bound, 413 for a text or image over its size, 422 for too
    many parameters or text that is not Unicode (a lone surrogate cannot be encoded as UTF-8)."""
    if _nested_past(inputs, limits.max_json_depth - 1):
        raise InvalidRequest(
            f"request body nested deeper than {limits.max_json_depth} levels",
            status=400,
            details={"max_json_depth": limits.max_json_depth},
        )
    if len(parameters) > limits.max_parameters:
        raise InvalidRequest(f"{len(parameters)} parameters; at most {limits.max_parameters}")
    for name, value in parameters.items():
        _check_unicode(f"parameter {name!r}", name)
        _check_unicode(f"parameter {name!r}", value)
    image_keys = {
        key
        for key, source in config.friendly.get("inputs", {}).items()
        if source["kind"] == "image"
    }
    tops = inputs.items() if isinstance(inputs, dict) else [(None, inputs)]
    for key, value in tops:
        if isinstance(key, str):
            _check_unicode("an input key", key)
        for text in _strings(value):
            _check_unicode(f"input {key!r}" if key else "a text", text)
            if key in image_keys:
                size = len(text) * 3 // 4  # base64
                if size > limits.max_image_bytes:
                    raise PayloadTooLarge(
                        f"image {key!r} of about {size} bytes; at most {limits.max_image_bytes}",
                        details={"max_image_bytes": limits.max_image_bytes},
                    )
            elif len(text) > limits.max_text_chars:
                raise PayloadTooLarge(
                    f"a text of {len(text)} characters; at most {limits.max_text_chars}",
                    details={"max_text_chars": limits.max_text_chars},
                )


def _check_unicode(where: str, value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                f"{where}: text is not valid Unicode ({exc.reason} at {exc.start})"
            ) from exc


def _nested_past(value: Any, bound: int) -> bool:
    """Whether lists and objects in ``value`` nest deeper than ``bound`` (iteratively: a deep
    value must not exhaust the stack)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > bound:
                return True
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return False


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
