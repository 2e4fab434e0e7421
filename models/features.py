"""model.yaml's ``features`` section: where a task's features come from when a request names an
entity (``{"inputs": {"entity_id": "…"}}``) instead of sending them, and the checks of those ids.

Plain data and checks only: the gateway imports this (through ``models.validation``), the worker's
lookup (``streams/features.py``) reads the parsed section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from streaminfer.models.errors import InvalidInput, ModelConfigError
from streaminfer.models.signature import TensorSpec

__all__ = [
    "ENTITY_KEY",
    "MAX_ENTITY_ID_CHARS",
    "check_entity_ids",
    "entity_ids",
    "parse_features",
    "resolve_url",
]

ENTITY_KEY = "entity_id"
"""The input key (friendly JSON) and tensor name (Kafka) of a lookup request."""
MAX_ENTITY_ID_CHARS = 128
DEFAULT_CACHE_TTL_S = 300
DEFAULT_TIMEOUT_S = 5.0
"""How long one batch's database lookup may take (connect, query, rows) before it counts as an
outage: FeatureStoreUnavailable, retried like any dependency outage."""
MAX_TIMEOUT_S = 300.0
MAX_IDENTIFIER_CHARS = 128
KNOWN_KEYS = ("url", "table", "key_column", "input", "columns", "cache_ttl_s", "timeout_s")


def parse_features(raw: Any, inputs: tuple[TensorSpec, ...], friendly: Any) -> dict:
    """The normalised section (``{}`` when absent): ``url`` (may name ``{model_dir}`` and
    ``{version_dir}``; ``STREAMINFER_FEATURE_STORE_URL`` overrides it), ``table``,
    ``key_column``, ``input`` (the tensor the columns fill), ``columns`` (in tensor order;
    default: that tensor's ``named_features`` names), ``cache_ttl_s`` (0: no cache) and
    ``timeout_s`` (the bound of one batch's database lookup)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ModelConfigError("features must be a mapping with url, table, key_column, ...")
    unknown = sorted(str(key) for key in raw if key not in KNOWN_KEYS)
    if unknown:
        raise ModelConfigError(
            f"features: unknown keys {unknown}; known keys are {list(KNOWN_KEYS)}"
        )
    url = raw.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ModelConfigError(
            "features.url must be a SQLAlchemy URL, e.g. sqlite:///{model_dir}/features.sqlite"
        )
    table = _identifier(raw, "table", "features")
    key_column = _identifier(raw, "key_column", "entity_id")

    numeric = [spec for spec in inputs if spec.datatype != "BYTES"]
    name = raw.get("input")
    if name is None:
        if len(numeric) != 1 or len(inputs) != 1:
            raise ModelConfigError(
                "features.input must name the input tensor the features fill "
                "(the model has more than one input)"
            )
        name = numeric[0].name
    spec = next((s for s in numeric if s.name == name), None)
    if spec is None or len(inputs) != 1:
        raise ModelConfigError(
            f"features.input {name!r} must be the model's only input, a numeric tensor"
        )
    if len(spec.shape) != 1 or spec.shape[0] < 1:
        raise ModelConfigError(
            f"features.input {name!r} must have a fixed shape [C], got {list(spec.shape)}"
        )

    columns = raw.get("columns")
    if columns is None:
        sources = (friendly or {}).get("inputs") or {}  # the raw section, checked already
        named = [
            s
            for key, s in sources.items()
            if s.get("tensor", key) == name and s.get("kind") == "named_features"
        ]
        if not named:
            raise ModelConfigError(
                f"features.columns is required: input {name!r} has no named_features names"
            )
        columns = list(named[0]["names"])
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) and _is_identifier(c) for c in columns)
        or len(set(columns)) != len(columns)
    ):
        raise ModelConfigError(
            f"features.columns must be a list of distinct column names of 1-"
            f"{MAX_IDENTIFIER_CHARS} characters"
        )
    if key_column in columns:
        raise ModelConfigError(f"features.columns must not include the key column {key_column!r}")
    if len(columns) != spec.shape[0]:
        raise ModelConfigError(
            f"features: {len(columns)} columns but input {name!r} has shape {list(spec.shape)}"
        )

    ttl = raw.get("cache_ttl_s", DEFAULT_CACHE_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ModelConfigError(
            f"features.cache_ttl_s must be an int >= 0 (0: no cache), got {ttl!r}"
        )
    timeout = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):  # (NaN fails the comparison too)
        raise ModelConfigError(
            f"features.timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], "
            f"got {timeout!r}"
        )
    return {
        "url": url.strip(),
        "table": table,
        "key_column": key_column,
        "input": name,
        "columns": columns,
        "cache_ttl_s": ttl,
        "timeout_s": float(timeout),
    }


def resolve_url(template: str, model_dir: Any, version_dir: Any) -> str:
    """``features.url`` with ``{model_dir}`` and ``{version_dir}`` replaced, and nothing else
    touched: a password may hold braces (``str.format`` would read ``{x}`` in it as a field
    and put part of the password into its KeyError)."""
    return template.replace("{model_dir}", str(model_dir)).replace(
        "{version_dir}", str(version_dir)
    )


def _identifier(raw: Mapping, key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not _is_identifier(value):
        raise ModelConfigError(
            f"features.{key} must be a name of 1-{MAX_IDENTIFIER_CHARS} characters, got {value!r}"
        )
    return value


def _is_identifier(value: str) -> bool:
    # NOTE: quoted by SQLAlchemy wherever it is used, so spaces ("mean radius") are fine
    return 0 < len(value) <= MAX_IDENTIFIER_CHARS and value.isprintable() and value.strip() == value


def entity_ids(value: Any, max_items: int) -> np.ndarray:
    """The friendly ``entity_id`` (a string or a list of them) as a BYTES tensor ``[N]``."""
    items = value if isinstance(value, list) else [value]
    array = np.empty(len(items), dtype=object)
    array[:] = items
    check_entity_ids(array, max_items)
    return array


def check_entity_ids(array: Any, max_items: int) -> None:
    """Raise InvalidInput unless ``array`` is ``[N]`` of 1-MAX_ENTITY_ID_CHARS printable
    strings (UTF-8 bytes from Kafka count as strings), ``1 <= N <= max_items``."""
    if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype.kind not in "OSU":
        raise InvalidInput(
            f"{ENTITY_KEY} must be a string or a list of strings (a BYTES tensor [N])"
        )
    if not 1 <= array.shape[0] <= max_items:
        raise InvalidInput(f"{ENTITY_KEY}: {array.shape[0]} ids, must be between 1 and {max_items}")
    for index, item in enumerate(array):
        if isinstance(item, bytes | np.bytes_):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"{ENTITY_KEY} item {index} is not UTF-8") from None
        if not isinstance(item, str):
            raise InvalidInput(
                f"{ENTITY_KEY} item {index} must be a string, got {type(item).__name__}"
            )
        if not 0 < len(item) <= MAX_ENTITY_ID_CHARS or not item.isprintable() or not item.strip():
            raise InvalidInput(
                f"{ENTITY_KEY} item {index} must be 1-{MAX_ENTITY_ID_CHARS} printable "
                f"characters, got {len(item)} characters"
            )
