"""Read and check ``model.yaml`` files of a Triton-shaped model repository.

Layout: ``<repo>/<model>/model.yaml`` plus ``<repo>/<model>/<version>/<artifact>``. This module
imports neither torch nor onnxruntime, so the gateway can learn tasks and signatures cheaply.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streaminfer.models.config_sections import (
    FRIENDLY_KINDS,
    PREPROCESS_KINDS,
    parse_friendly,
    parse_preprocess,
    parse_python,
)
from streaminfer.models.errors import ModelConfigError, ModelVersionNotFound
from streaminfer.models.features import parse_features
from streaminfer.models.signature import NUMPY_DTYPES, TensorSpec

__all__ = [
    "BACKENDS",
    "DEVICES",
    "FRIENDLY_KINDS",
    "PREPROCESS_KINDS",
    "TASK_NAME_PATTERN",
    "ModelConfig",
    "load_model_config",
    "load_repository_configs",
]

logger = logging.getLogger(__name__)

SERVED_VERSIONS = 2
"""Versions of a task held loaded at once: the default and the one before it (a rollback, or
clients pinned to it while they move)."""

CONFIG_FILE = "model.yaml"
MAX_DEADLINE_MS = 366 * 24 * 3600 * 1000
"""A year: a longer deadline is no deadline, and past year 9999 no timestamp at all."""
# NOTE: schemas/topics.py's TASK_NAME_RE is the same pattern, for topic names: models/ and schemas/
# import nothing of each other, so each keeps its copy; tests/unit/models/test_signature.py checks
# that they agree. \Z: "$" accepts a trailing newline.
TASK_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
BACKENDS = ("onnxruntime", "torch", "python")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_ARTIFACTS = {"onnxruntime": "model.onnx", "torch": "model.pt", "python": "model.py"}


@dataclass(frozen=True)
class ModelConfig:
    """A parsed ``model.yaml`` plus the version directories found beside it."""

    name: str
    task: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    max_batch_delay_ms: float
    instances: int
    device: str
    warmup: bool
    path: Path
    versions: tuple[str, ...]
    default_version: str | None
    preprocess: dict = field(default_factory=dict, hash=False)
    friendly: dict = field(default_factory=dict, hash=False)
    description: str = ""
    # Additions beyond the first sketch of the interface, defaulted so callers need not care.
    artifact: str = ""
    version_policy: str = "latest"
    default_deadline_ms: int | None = None
    """Deadline of a request that sets none (from its ``created_at``); None = no deadline."""
    python: dict = field(default_factory=dict, hash=False)
    """``backend: python`` only: ``{"class": name or None, "parameters": {...}}``."""
    features: dict = field(default_factory=dict, hash=False)
    """Where features come from for requests naming an entity (models/features.py); {} = none."""

    @property
    def served_versions(self) -> tuple[str, ...]:
        """The versions requests may name: the default one and the newest others, SERVED_VERSIONS
        in all (like Triton's ``latest {num_versions: N}``). Older ones are unloaded by workers and
        refused by the gateway: a client must not keep any model ever built in memory."""
        if self.default_version is None:
            return ()
        others = [v for v in reversed(self.versions) if v != self.default_version][
            : SERVED_VERSIONS - 1
        ]
        return tuple(v for v in self.versions if v == self.default_version or v in others)

    def version_path(self, version: str | None = None) -> Path:
        """Directory of ``version`` (default: ``default_version``); raises ModelVersionNotFound."""
        if version is None:
            if self.default_version is None:
                if self.version_policy != "latest":
                    reason = f"version_policy pins {self.version_policy!r}, which is not built"
                else:
                    reason = "no version directory is built"
                raise ModelVersionNotFound(
                    f"task {self.task!r}: {reason} under {self.path} (found {list(self.versions)})"
                )
            version = self.default_version
        version = str(version)
        if version not in self.versions:
            raise ModelVersionNotFound(
                f"task {self.task!r} has no version {version!r} (available: {list(self.versions)})"
            )
        return self.path / version

    def artifact_path(self, version: str | None = None) -> Path:
        """Path of the model file inside a version directory."""
        return self.version_path(version) / self.artifact

    def input_spec(self, name: str) -> TensorSpec:
        """The input tensor named ``name``; raises KeyError."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def signature(self) -> dict[str, Any]:
        """JSON-able summary for ``GET /v1/tasks``; tensor shapes exclude the batch dimension."""
        return {
            "task": self.task,
            "model": self.name,
            "backend": self.backend,
            "description": self.description,
            "versions": list(self.versions),
            "default_version": self.default_version,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "friendly_inputs": {
                key: source["kind"] for key, source in self.friendly.get("inputs", {}).items()
            },
            "friendly_outputs": dict(self.friendly.get("outputs", {})),
            # kept apart: these keys carry parsed JSON, not values of their tensor's datatype
            "friendly_json_outputs": dict(self.friendly.get("json_outputs", {})),
            "batching": {
                "max_batch_size": self.max_batch_size,
                "max_batch_delay_ms": self.max_batch_delay_ms,
            },
            "default_deadline_ms": self.default_deadline_ms,
            # requests may name an entity instead (docs/features.md); never the URL: it may hold a password
            "feature_lookup": {
                "input": "entity_id",
                "fills": self.features["input"],
                "columns": len(self.features["columns"]),
            }
            if self.features
            else None,
            "instances": self.instances,
            "device": self.device,
        }


def load_model_config(model_dir: Path) -> ModelConfig:
    """Parse ``<model_dir>/model.yaml``; every problem becomes a ModelConfigError naming the file."""
    model_dir = Path(model_dir)
    config_file = model_dir / CONFIG_FILE
    try:
        raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelConfigError(f"{config_file}: file not found") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"{config_file}: cannot read YAML: {exc}") from exc
    try:
        return _parse(raw, model_dir)
    except ModelConfigError as exc:
        raise ModelConfigError(f"{config_file}: {exc}") from None


def load_repository_configs(repo: Path) -> dict[str, ModelConfig]:
    """Configs of every model directory in ``repo``, keyed by task; dirs without model.yaml skipped."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ModelConfigError(f"model repository {repo} is not a directory")
    configs: dict[str, ModelConfig] = {}
    for model_dir in sorted(repo.iterdir()):
        if not model_dir.is_dir() or not (model_dir / CONFIG_FILE).is_file():
            continue
        config = load_model_config(model_dir)
        if config.task in configs:
            raise ModelConfigError(
                f"task {config.task!r} is declared by both {configs[config.task].path} "
                f"and {model_dir}"
            )
        configs[config.task] = config
    return configs


# --- parsing -------------------------------------------------------------------------------------


def _parse(raw: Any, model_dir: Path) -> ModelConfig:
    if not isinstance(raw, Mapping):
        raise ModelConfigError("expected a mapping at the top level")
    known = {
        "name", "task", "description", "backend", "artifact", "inputs", "outputs",
        "max_batch_size", "max_batch_delay_ms", "instances", "device", "warmup",
        "version_policy", "preprocess", "friendly", "default_deadline_ms", "python",
    }  # fmt: skip
    known.add("features")  # where features come from (models/features.py)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelConfigError(f"unknown keys {unknown}; known keys are {sorted(known)}")

    name = str(raw.get("name", model_dir.name))
    task = str(raw.get("task", name))
    if not TASK_NAME_PATTERN.match(task):
        raise ModelConfigError(f"task name {task!r} must match {TASK_NAME_PATTERN.pattern}")
    backend = _choice(raw, "backend", BACKENDS, required=True)
    device = _choice(raw, "device", DEVICES, default="auto")
    inputs = _tensor_specs(raw.get("inputs"), "inputs")
    outputs = _tensor_specs(raw.get("outputs"), "outputs")
    max_batch_size = _number(raw, "max_batch_size", int, default=8, minimum=1)
    max_batch_delay_ms = float(_number(raw, "max_batch_delay_ms", float, default=5.0, minimum=0))
    instances = _number(raw, "instances", int, default=1, minimum=1)
    default_deadline_ms = None
    if raw.get("default_deadline_ms") is not None:
        default_deadline_ms = _number(raw, "default_deadline_ms", int, default=None, minimum=1)
        if default_deadline_ms > MAX_DEADLINE_MS:
            raise ModelConfigError(
                f"default_deadline_ms must be <= {MAX_DEADLINE_MS}, got {default_deadline_ms}"
            )
    warmup = raw.get("warmup", True)
    if not isinstance(warmup, bool):
        raise ModelConfigError(f"warmup must be true or false, got {warmup!r}")
    artifact = str(raw.get("artifact") or DEFAULT_ARTIFACTS[backend])
    if Path(artifact).name != artifact:
        raise ModelConfigError(f"artifact must be a file name inside the version dir: {artifact!r}")

    versions = _scan_versions(model_dir)
    version_policy = str(raw.get("version_policy", "latest"))
    if version_policy == "latest":
        default_version = versions[-1] if versions else None
    elif version_policy.isdigit():
        default_version = version_policy if version_policy in versions else None
        if default_version is None:
            logger.warning("task %s pins version %s, which is not built", task, version_policy)
    else:
        raise ModelConfigError(
            f"version_policy must be 'latest' or a version number, got {version_policy!r}"
        )

    return ModelConfig(
        name=name,
        task=task,
        backend=backend,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        max_batch_delay_ms=max_batch_delay_ms,
        instances=instances,
        device=device,
        warmup=warmup,
        path=model_dir.resolve(),
        versions=versions,
        default_version=default_version,
        preprocess=parse_preprocess(raw.get("preprocess"), inputs),
        friendly=parse_friendly(raw.get("friendly"), inputs, outputs),
        description=str(raw.get("description", "")).strip(),
        artifact=artifact,
        version_policy=version_policy,
        default_deadline_ms=default_deadline_ms,
        python=parse_python(raw.get("python"), backend),
        features=parse_features(raw.get("features"), inputs, raw.get("friendly")),
    )


def _choice(raw: Mapping, key: str, allowed: tuple[str, ...], *, default=None, required=False):
    value = raw.get(key, default)
    if value is None and required:
        raise ModelConfigError(f"{key} is required (one of {list(allowed)})")
    if value not in allowed:
        raise ModelConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
    return value


def _number(raw: Mapping, key: str, kind: type, *, default, minimum):
    value = raw.get(key, default)
    # NOTE: bool is an int subclass; `max_batch_size: true` is a typo, not 1.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise ModelConfigError(f"{key} must be a {kind.__name__}, got {value!r}")
    if value < minimum:
        raise ModelConfigError(f"{key} must be >= {minimum}, got {value!r}")
    return value


def _tensor_specs(raw: Any, key: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ModelConfigError(f"{key} must be a non-empty list of {{name, datatype, shape}}")
    specs: list[TensorSpec] = []
    for index, item in enumerate(raw):
        where = f"{key}[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ModelConfigError(f"{where} needs a string 'name'")
        datatype = item.get("datatype")
        if datatype not in NUMPY_DTYPES:
            raise ModelConfigError(
                f"{where} ({item['name']}): datatype must be one of {list(NUMPY_DTYPES)}, "
                f"got {datatype!r}"
            )
        shape = item.get("shape", [])
        if not isinstance(shape, list) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and (dim >= 1 or dim == -1)
            for dim in shape
        ):
            raise ModelConfigError(
                f"{where} ({item['name']}): shape must be a list of sizes >= 1 or -1 "
                f"(per item, without the batch dimension), got {shape!r}"
            )
        specs.append(TensorSpec(name=item["name"], datatype=datatype, shape=tuple(shape)))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ModelConfigError(f"{key} has duplicate tensor names: {names}")
    return tuple(specs)


def _scan_versions(model_dir: Path) -> tuple[str, ...]:
    # Only all-digit names count, so a builder's temporary directory is never served.
    found = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return tuple(sorted(found, key=int))
