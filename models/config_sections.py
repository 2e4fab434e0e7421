"""Checks of model.yaml's ``preprocess`` and ``friendly`` sections (the JSON a client may send
instead of tensors), normalised into plain dicts for ``ModelConfig``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streaminfer.models.errors import ModelConfigError
from streaminfer.models.friendly import MAX_IMAGE_PIXELS
from streaminfer.models.signature import TensorSpec

FRIENDLY_KINDS = ("text", "array", "image", "named_features")
PREPROCESS_KINDS = ("none", "tokenize")


def parse_preprocess(raw: Any, inputs: tuple[TensorSpec, ...]) -> dict:
    if raw is None:
        return {"kind": "none"}
    if not isinstance(raw, Mapping):
        raise ModelConfigError("preprocess must be a mapping")
    kind = raw.get("kind", "none")
    if kind not in PREPROCESS_KINDS:
        raise ModelConfigError(f"preprocess.kind must be one of {list(PREPROCESS_KINDS)}")
    result = dict(raw, kind=kind)
    if kind == "tokenize":
        text_input = raw.get("input")
        by_name = {spec.name: spec for spec in inputs}
        if text_input not in by_name or by_name[text_input].datatype != "BYTES":
            raise ModelConfigError("preprocess.input must name a BYTES input tensor")
        max_length = raw.get("max_length", 256)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ModelConfigError(f"preprocess.max_length must be an int >= 2, got {max_length!r}")
        result.update(input=text_input, tokenizer=str(raw.get("tokenizer", "tokenizer.json")),
                      max_length=max_length)  # fmt: skip
    return result


def parse_friendly(
    raw: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> dict:
    """Normalise the ``friendly:`` section; when absent, every tensor is its own friendly key."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ModelConfigError("friendly must be a mapping with 'inputs' and 'outputs'")
    by_name = {spec.name: spec for spec in inputs}

    raw_inputs = raw.get("inputs") or {
        spec.name: {"kind": "text" if spec.datatype == "BYTES" else "array", "tensor": spec.name}
        for spec in inputs
    }
    if not isinstance(raw_inputs, Mapping):
        raise ModelConfigError("friendly.inputs must map friendly keys to {kind, tensor, ...}")
    sources: dict[str, dict] = {}
    for key, source in raw_inputs.items():
        where = f"friendly.inputs.{key}"
        if not isinstance(source, Mapping):
            raise ModelConfigError(f"{where} must be a mapping with 'kind' and 'tensor'")
        source = dict(source)
        source.setdefault("tensor", key)
        kind, tensor = source.get("kind"), source["tensor"]
        if kind not in FRIENDLY_KINDS:
            raise ModelConfigError(f"{where}.kind must be one of {list(FRIENDLY_KINDS)}")
        if tensor not in by_name:
            raise ModelConfigError(f"{where}.tensor {tensor!r} is not an input tensor")
        _check_source(where, source, by_name[tensor])
        sources[str(key)] = source
    unreachable = sorted(set(by_name) - {source["tensor"] for source in sources.values()})
    if unreachable:
        raise ModelConfigError(f"friendly.inputs gives no key for input tensors {unreachable}")

    bare_key = raw.get("bare_key", next(iter(sources)))
    if bare_key not in sources:
        raise ModelConfigError(f"friendly.bare_key {bare_key!r} is not a friendly input key")

    plain, json_outputs = _friendly_outputs(raw.get("outputs"), outputs)
    friendly = {"inputs": sources, "outputs": plain, "bare_key": bare_key}
    if json_outputs:
        friendly["json_outputs"] = json_outputs
    return friendly


def _friendly_outputs(raw: Any, outputs: tuple[TensorSpec, ...]) -> tuple[dict, dict]:
    """``(key -> tensor, key -> tensor)``: outputs given as their tensor's values, and BYTES
    outputs whose items are JSON documents (``{tensor: t, kind: json}``), given parsed."""
    by_name = {spec.name: spec for spec in outputs}
    raw = raw or {name: name for name in by_name}
    message = (
        f"friendly.outputs must map friendly keys to output tensors {sorted(by_name)} "
        "(or to {tensor, kind: json})"
    )
    if not isinstance(raw, Mapping):
        raise ModelConfigError(message)
    plain: dict[str, str] = {}
    json_outputs: dict[str, str] = {}
    for key, target in raw.items():
        if isinstance(target, Mapping):
            tensor, kind = target.get("tensor", key), target.get("kind")
            if kind != "json" or tensor not in by_name:
                raise ModelConfigError(f"friendly.outputs.{key}: {message}")
            if by_name[tensor].datatype != "BYTES" or by_name[tensor].shape != ():
                raise ModelConfigError(
                    f"friendly.outputs.{key}: kind json needs a BYTES tensor of shape []"
                )
            json_outputs[str(key)] = tensor
        elif target in by_name:
            plain[str(key)] = target
        else:
            raise ModelConfigError(message)
    return plain, json_outputs


def parse_python(raw: Any, backend: str) -> dict:
    """The ``python:`` section of ``backend: python``: which class of model.py serves (None:
    the one class it defines with a ``predict_batch``) and the keyword arguments it is built
    with."""
    if raw is None:
        return {"class": None, "parameters": {}} if backend == "python" else {}
    if backend != "python":
        raise ModelConfigError(f"a python section needs backend python, not {backend}")
    if not isinstance(raw, Mapping) or set(raw) - {"class", "parameters"}:
        raise ModelConfigError("python must be a mapping with 'class' and/or 'parameters'")
    name = raw.get("class")
    if name is not None and not (isinstance(name, str) and name.isidentifier()):
        raise ModelConfigError(f"python.class must be a class name, got {name!r}")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, Mapping) or not all(
        isinstance(key, str) and key.isidentifier() for key in parameters
    ):
        raise ModelConfigError("python.parameters must map argument names to values")
    return {"class": name, "parameters": dict(parameters)}


def _check_source(where: str, source: dict, spec: TensorSpec) -> None:
    kind = source["kind"]
    if kind == "text" and (spec.datatype != "BYTES" or spec.shape != ()):
        raise ModelConfigError(f"{where}: kind text needs a BYTES tensor of shape []")
    if kind != "text" and spec.datatype == "BYTES":
        raise ModelConfigError(f"{where}: kind {kind} needs a numeric tensor")
    if kind == "image" and spec.shape == (-1, -1, 3):
        # the image as sent: RGB pixels at its own size, so boxes and masks stay in its pixels
        if spec.datatype != "UINT8":
            raise ModelConfigError(f"{where}: kind image of shape [-1, -1, 3] needs UINT8")
        max_pixels = source.setdefault("max_pixels", MAX_IMAGE_PIXELS)
        if (
            isinstance(max_pixels, bool)
            or not isinstance(max_pixels, int)
            or not 1 <= max_pixels <= MAX_IMAGE_PIXELS
        ):
            raise ModelConfigError(f"{where}.max_pixels must be an int in 1..{MAX_IMAGE_PIXELS}")
        source["native"] = True
    elif kind == "image":
        if len(spec.shape) != 2 or -1 in spec.shape:
            raise ModelConfigError(
                f"{where}: kind image needs a tensor of fixed shape [H, W] (resized grayscale) "
                "or a UINT8 tensor of shape [-1, -1, 3] (RGB as sent)"
            )
        if source.setdefault("invert", "auto") not in ("auto", True, False):
            raise ModelConfigError(f"{where}.invert must be auto, true or false")
        max_value = source.setdefault("max_value", 255.0)
        if isinstance(max_value, bool) or not isinstance(max_value, int | float) or max_value <= 0:
            raise ModelConfigError(f"{where}.max_value must be a positive number")
    if kind == "named_features":
        names = source.get("names")
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
        ):
            raise ModelConfigError(f"{where}.names must be a list of distinct strings")
        if spec.shape != (len(names),):
            raise ModelConfigError(
                f"{where}: {len(names)} names but tensor {spec.name} has shape {list(spec.shape)}"
            )
