"""Map a task's friendly JSON to contract tensors and back, as declared in ``model.yaml``.

Numpy only (Pillow lazily, for images): the HTTP gateway imports this module, so torch and
onnxruntime must stay out. The ``friendly:`` section, not the task name, drives the mapping, so a
new task needs a yaml file and no code. An output declared ``{tensor: t, kind: json}`` (a BYTES
tensor, one JSON document per item) is given parsed. Source kinds:

- ``text``: a string or a list of strings -> BYTES ``[N]`` (object array of ``str``)
- ``array``: nested lists of numbers, one item or ``N`` items -> ``[N, *shape]``
- ``image``: a base64 PNG or JPEG (or a list; no other format) -> grayscale, resized to ``[H, W]``, scaled to
  ``0..max_value``, inverted when ``invert`` says so (``auto``: when the background is light); or, for a
  UINT8 tensor of shape ``[-1, -1, 3]``, the RGB pixels at the image's own size (at most ``max_pixels``;
  the images of one request must then share a size), so what a model reports in pixels is exact
- ``named_features``: ``{name: number}`` or a list of them -> ``[N, len(names)]`` in ``names`` order
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streaminfer.models.errors import InvalidInput, ModelConfigError
from streaminfer.models.features import ENTITY_KEY, entity_ids
from streaminfer.models.signature import NUMPY_DTYPES, TensorSpec
from streaminfer.models.validation import validate_tensors

if TYPE_CHECKING:
    from streaminfer.models.config import ModelConfig

__all__ = ["friendly_to_tensors", "tensors_to_friendly"]

logger = logging.getLogger(__name__)

# Larger images are refused from their header, before decoding: an 8x8 classifier has no use for
# them, and decoding is what costs (a 4096x4096 1-bit PNG is 2.8 KB of base64 and ~0.5 s of CPU).
MAX_IMAGE_PIXELS = 2048 * 2048
MAX_REQUEST_IMAGE_PIXELS = 4 * MAX_IMAGE_PIXELS
"""Declared pixels of all the images of one request together."""
IMAGE_FORMATS = ("PNG", "JPEG")


def friendly_to_tensors(config: ModelConfig, inputs: Any) -> dict[str, np.ndarray]:
    """Contract input tensors (batch dim ``N >= 1``) for friendly ``inputs``, validated.

    ``inputs`` is a mapping of friendly keys (``{"text": ...}``) or a bare value, which goes to the
    ``friendly.bare_key`` source (the first declared one unless set).
    """
    sources: dict[str, dict] = config.friendly["inputs"]
    if config.features and isinstance(inputs, Mapping) and ENTITY_KEY in inputs:
        # an entity instead of its features, which the worker looks up (models/features.py)
        if len(inputs) > 1:
            raise InvalidInput(
                f"task {config.task!r}: give either {ENTITY_KEY!r} or the inputs, not both"
            )
        return {ENTITY_KEY: entity_ids(inputs[ENTITY_KEY], config.max_batch_size)}
    if not isinstance(inputs, Mapping):
        inputs = {config.friendly["bare_key"]: inputs}
    unknown = sorted(str(key) for key in inputs if key not in sources)
    if unknown:
        raise InvalidInput(
            f"task {config.task!r}: unknown input keys {unknown}; expected one of {sorted(sources)}"
        )

    tensors: dict[str, np.ndarray] = {}
    for spec in config.inputs:
        keys = [key for key, source in sources.items() if source["tensor"] == spec.name]
        given = [key for key in keys if key in inputs]
        if not given:
            raise InvalidInput(f"task {config.task!r}: missing input, give one of {keys}")
        if len(given) > 1:
            raise InvalidInput(f"task {config.task!r}: give only one of {given}")
        key = given[0]
        kind = sources[key]["kind"]
        # a list of items is refused past the batch size before any item is converted (decoded)
        if (
            kind != "array"
            and isinstance(inputs[key], list)
            and len(inputs[key]) > config.max_batch_size
        ):
            raise InvalidInput(
                f"input {key!r}: batch of {len(inputs[key])} items, must be between 1 and "
                f"{config.max_batch_size}"
            )
        tensors[spec.name] = _CONVERTERS[kind](key, inputs[key], sources[key], spec)
    validate_tensors(config, tensors)
    return tensors


def tensors_to_friendly(config: ModelConfig, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """JSON-able friendly outputs: one item unwrapped, several items as a list per key."""
    result: dict[str, Any] = {}
    for key, tensor in config.friendly["outputs"].items():
        if tensor not in outputs:
            raise ModelConfigError(f"task {config.task!r}: output tensor {tensor!r} is missing")
        array = np.asarray(outputs[tensor])
        if array.ndim == 0:
            raise ModelConfigError(f"output {tensor!r} has no batch dimension")
        items = [_jsonable(item) for item in array]
        result[key] = items[0] if len(items) == 1 else items
    for key, tensor in config.friendly.get("json_outputs", {}).items():
        if tensor not in outputs:
            raise ModelConfigError(f"task {config.task!r}: output tensor {tensor!r} is missing")
        try:
            items = [
                json.loads(_jsonable(item)) for item in np.asarray(outputs[tensor]).reshape(-1)
            ]
        except (TypeError, ValueError) as exc:
            raise ModelConfigError(f"output {tensor!r}: an item is not a JSON document") from exc
        result[key] = items[0] if len(items) == 1 else items
    return result


# --- friendly -> tensor converters ---------------------------------------------------------------


def _as_items(key: str, value: Any, is_item) -> list | None:
    """One item or a non-empty list of items; None when ``value`` is neither."""
    if is_item(value):
        return [value]
    if isinstance(value, list) and value and all(is_item(item) for item in value):
        return value
    if isinstance(value, list) and not value:
        raise InvalidInput(f"input {key!r}: the list is empty")
    return None  # the caller reports a message specific to its kind


def _text(key: str, value: Any, source: dict, spec: TensorSpec) -> np.ndarray:
    items = _as_items(key, value, lambda item: isinstance(item, str))
    if items is None:
        raise InvalidInput(f"input {key!r}: expected a string or a list of strings")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _array(key: str, value: Any, source: dict, spec: TensorSpec) -> np.ndarray:
    if isinstance(value, str | bytes | Mapping) or value is None:
        raise InvalidInput(f"input {key!r}: expected nested lists of numbers")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer like 10**400
        raise InvalidInput(f"input {key!r}: expected a rectangular array of numbers") from exc
    if array.ndim == len(spec.shape):
        array = array[np.newaxis]
    if array.ndim != len(spec.shape) + 1:
        raise InvalidInput(
            f"input {key!r}: expected shape {list(spec.shape)} or [N, *{list(spec.shape)}], "
            f"got {list(array.shape)}"
        )
    dtype = NUMPY_DTYPES[spec.datatype]
    if dtype.kind in "iub" and np.isfinite(array).all() and (array != np.round(array)).any():
        raise InvalidInput(f"input {key!r}: expected whole numbers for {spec.datatype}")
    if dtype.kind in "iub" and not np.isfinite(array).all():
        raise InvalidInput(f"input {key!r}: NaN or infinity in an integer tensor")
    return array.astype(dtype)


def _named_features(key: str, value: Any, source: dict, spec: TensorSpec) -> np.ndarray:
    items = _as_items(key, value, lambda item: isinstance(item, Mapping))
    if items is None:
        raise InvalidInput(f"input {key!r}: expected {{name: number}} or a list of them")
    names: list[str] = source["names"]
    known = set(names)
    rows = np.empty((len(items), len(names)), dtype=np.float64)
    for index, item in enumerate(items):
        unknown = sorted(str(name) for name in item if name not in known)
        missing = [name for name in names if name not in item]
        if unknown or missing:
            raise InvalidInput(
                f"input {key!r} item {index}: unknown features {unknown}, missing features "
                f"{missing}"
            )
        for column, name in enumerate(names):
            number = item[name]
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise InvalidInput(f"input {key!r} item {index}: feature {name!r} must be a number")
            try:
                rows[index, column] = number
            except OverflowError as exc:  # an integer past float64, like 10**400
                raise InvalidInput(
                    f"input {key!r} item {index}: feature {name!r} is out of range"
                ) from exc
    return rows.astype(NUMPY_DTYPES[spec.datatype])


def _image(key: str, value: Any, source: dict, spec: TensorSpec) -> np.ndarray:
    items = _as_items(key, value, lambda item: isinstance(item, str))
    if items is None:
        raise InvalidInput(f"input {key!r}: expected a base64 image or a list of them")
    # every header first (format, declared size): nothing is decoded unless all of them pass
    max_pixels = source.get("max_pixels", MAX_IMAGE_PIXELS)
    opened = [
        _open_image(f"input {key!r} item {i}", item, max_pixels) for i, item in enumerate(items)
    ]
    declared = sum(image.width * image.height for _, image in opened)
    if declared > MAX_REQUEST_IMAGE_PIXELS:
        raise InvalidInput(
            f"input {key!r}: {declared} pixels in all; at most {MAX_REQUEST_IMAGE_PIXELS}"
        )
    if source.get("native"):
        sizes = sorted({image.size for _, image in opened})
        if len(sizes) > 1:  # padding would put pixels in the image that were never sent
            raise InvalidInput(
                f"input {key!r}: images of sizes {sizes} in one request; the images "
                "of a request must share a size (send the others separately)"
            )
        return np.stack([_decode_rgb(where, image) for where, image in opened])
    pixels = [_decode_image(where, image, source, spec) for where, image in opened]
    return np.stack(pixels).astype(NUMPY_DTYPES[spec.datatype])


def _open_image(where: str, text: str, max_pixels: int = MAX_IMAGE_PIXELS):
    """``(where, image)`` with only the header read (Pillow opens lazily): a PNG or JPEG of at
    most ``max_pixels`` declared pixels."""
    from PIL import Image, UnidentifiedImageError  # lazily: only image tasks need Pillow

    if text.startswith("data:") and "," in text:  # tolerate data URLs
        text = text.split(",", 1)[1]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{where}: not valid base64") from exc
    try:
        image = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{where}: not a readable image, PNG or JPEG ({exc})") from exc
    if image.width * image.height > max_pixels:
        raise InvalidInput(
            f"{where}: image of {image.width}x{image.height} is too large; at most "
            f"{max_pixels} pixels"
        )
    return where, image


def _loaded(where: str, image):
    """The decoded image, transparent pixels flattened onto white (they are background)."""
    from PIL import Image

    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{where}: not a readable image ({exc})") from exc
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image


def _decode_rgb(where: str, image) -> np.ndarray:
    """``[H, W, 3]`` UINT8 at the size sent. NOTE: EXIF orientation is not applied: the pixels
    are the ones stored, which is what coordinates in the result refer to."""
    return np.asarray(_loaded(where, image).convert("RGB"), dtype=np.uint8)


def _decode_image(where: str, image, source: dict, spec: TensorSpec) -> np.ndarray:
    from PIL import Image

    image = _loaded(where, image)
    gray = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    invert = source["invert"]
    if invert == "auto":
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = bool(np.median(border) > 0.5)  # light background -> dark ink -> flip
    if invert:
        gray = 1.0 - gray
    height, width = spec.shape
    # BOX (area average) mirrors how the digits set was made: counts of ink per pixel block.
    small = Image.fromarray(gray.astype(np.float32)).resize((width, height), Image.Resampling.BOX)
    return np.clip(np.asarray(small, dtype=np.float64), 0.0, 1.0) * float(source["max_value"])


_CONVERTERS = {
    "text": _text,
    "array": _array,
    "image": _image,
    "named_features": _named_features,
}


def _jsonable(item: Any) -> Any:
    if isinstance(item, np.ndarray):
        if item.dtype.kind in "OSU":
            return [_jsonable(element) for element in item]
        return item.tolist()
    if isinstance(item, bytes | np.bytes_):
        return bytes(item).decode("utf-8", errors="replace")
    if isinstance(item, np.generic):
        value = item.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return item
