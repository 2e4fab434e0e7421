"""Errors raised by the model repository and runtimes.

Hierarchy::

    ModelError                      root; ``code`` is the stable error code, ``retriable`` the retry hint
    ├── ModelNotFound               no model serves the task (TASK_NOT_FOUND)
    ├── ModelVersionNotFound        the task exists, the version does not (MODEL_VERSION_NOT_FOUND)
    ├── InvalidInput                wrong shape/dtype, missing tensor, empty text, unknown feature
    ├── InferenceFailed             the backend raised while running a batch (retriable)
    ├── ModelConfigError            model.yaml or the artifact is unusable
    ├── ModelBuildFailed            a built-in model missed its quality bar while being built
    └── MissingDependency           an optional package a builder or backend needs is not installed

These know nothing about HTTP or Kafka: the gateway maps them to status codes and the worker
reads ``retriable`` instead of parsing messages.
"""

from __future__ import annotations

__all__ = [
    "InferenceFailed",
    "InvalidInput",
    "MissingDependency",
    "ModelBuildFailed",
    "ModelConfigError",
    "ModelError",
    "ModelNotFound",
    "ModelVersionNotFound",
]


class ModelError(Exception):
    """Root of every error raised by ``models``."""

    retriable: bool = False
    code: str = "MODEL_ERROR"


class ModelNotFound(ModelError):
    """No model in the repository serves the requested task."""

    code = "TASK_NOT_FOUND"


class ModelVersionNotFound(ModelError):
    """The task exists but the requested (or default) version is not built."""

    code = "MODEL_VERSION_NOT_FOUND"


class InvalidInput(ModelError):
    """Inputs do not match the model's signature (shape, dtype, names, empty text...)."""

    code = "INVALID_INPUT"


class InferenceFailed(ModelError):
    """The backend failed while running a batch; running it again may succeed."""

    code = "INFERENCE_FAILED"
    retriable = True


class ModelConfigError(ModelError):
    """``model.yaml`` is malformed or disagrees with the model artifact."""

    code = "MODEL_CONFIG_ERROR"


class ModelBuildFailed(ModelError):
    """A built-in model could not be built or missed its accuracy/agreement threshold."""

    code = "MODEL_BUILD_FAILED"


class MissingDependency(ModelError):
    """An optional package is not installed; the message names the command that installs it."""

    code = "MISSING_DEPENDENCY"
