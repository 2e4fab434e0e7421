"""Python backend: ``PythonModel`` serves a class from ``model.py`` in the version directory.

Like Triton's Python backend and MLServer's custom runtimes, but the class is plain Python with
nothing of ours to import::

    class Model:
        def __init__(self, **parameters): ...       # model.yaml python.parameters
        def load(self): ...                         # open files, once
        def warmup(self): ...                       # optional
        def predict_batch(self, inputs): ...        # {name: array [N, ...]} -> {name: array [N, ...]}

Which class: ``python: {class: Name}`` in model.yaml, else the one class *defined* in model.py
(not imported into it) that has a ``predict_batch``; none or several is a ModelConfigError that
names them. Explicit beats clever where a file holds helpers, and a one-class file needs no yaml.

How it is imported: the source is compiled and run into a fresh module of a name unique to the
task, version and load (``streaminfer_python_model.<task>.v<version>.<n>``), without the import
system's caches: two versions of a task coexist, a reload runs the file as it is now (a stale
``__pycache__`` of a rewritten file in the same second cannot be picked up), and nothing is
written into the model repository, which may be read-only. The module is in ``sys.modules`` (so
dataclasses and pickling work) until the model is garbage-collected.

Threads: ``predict_batch`` runs in the worker's thread pool, like the other backends, and may be
called from several threads at once; native code should release the GIL (OpenCV, numpy and
torch do) or the batches of the other models wait on it.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import logging
import re
import sys
import types
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from streaminfer.models.base import Model
from streaminfer.models.errors import ModelConfigError
from streaminfer.models.signature import NUMPY_DTYPES

__all__ = ["PythonModel", "find_model_class", "import_model_file"]

logger = logging.getLogger(__name__)

MODULE_PREFIX = "streaminfer_python_model"
REQUIRED_METHODS = ("load", "predict_batch")
_loads = itertools.count(1)


def import_model_file(path: Path, module_name: str) -> types.ModuleType:
    """Run ``path`` as a new module named ``module_name`` (registered in ``sys.modules``).

    Raises ModelConfigError for a missing file, a syntax error or an exception at import time.
    """
    path = Path(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from exc
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        raise ModelConfigError(f"{path} is not valid Python: {exc}") from exc
    spec = importlib.util.spec_from_loader(module_name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:  # SystemExit or KeyboardInterrupt from model code included
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ModelConfigError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    return module


def find_model_class(module: types.ModuleType, name: str | None = None) -> type:
    """The class ``name`` of ``module``, or its one class with a ``predict_batch``."""
    where = module.__file__
    if name is not None:
        found = getattr(module, name, None)
        if not inspect.isclass(found):
            classes = sorted(n for n, v in vars(module).items() if inspect.isclass(v))
            raise ModelConfigError(
                f"{where} has no class {name!r} (python.class); it has {classes}"
            )
    else:
        candidates = [
            value for value in vars(module).values()
            if inspect.isclass(value) and value.__module__ == module.__name__
            and callable(getattr(value, "predict_batch", None))
        ]  # fmt: skip
        if len(candidates) != 1:
            names = sorted(value.__name__ for value in candidates)
            raise ModelConfigError(
                f"{where} defines {len(candidates)} classes with a predict_batch ({names}); "
                "define one, or name it in model.yaml: python: {class: Name}"
            )
        found = candidates[0]
    missing = [method for method in REQUIRED_METHODS if not callable(getattr(found, method, None))]
    if missing:
        raise ModelConfigError(f"{where}: class {found.__name__} has no method {missing}")
    return found


def _module_name(task: str, version: str) -> str:
    return f"{MODULE_PREFIX}.{re.sub(r'[^0-9A-Za-z_]', '_', task)}.v{version}.{next(_loads)}"


class PythonModel(Model):
    """A ``model.py`` class behind the ``Model`` interface: inputs are validated and outputs
    checked against model.yaml exactly as for the ONNX and torch backends."""

    _instance: object

    def _load_backend(self, feed_names: tuple[str, ...]) -> None:
        module_name = _module_name(self.name, self.version)
        module = import_model_file(self.artifact_path, module_name)
        weakref.finalize(self, sys.modules.pop, module_name, None)
        cls = find_model_class(module, self.config.python.get("class"))
        parameters = dict(self.config.python.get("parameters") or {})
        try:
            if "device" in inspect.signature(cls).parameters:
                parameters.setdefault("device", self.device)  # "cpu" or "cuda", resolved
            instance = cls(**parameters)
            instance.load()
        except Exception as exc:
            raise ModelConfigError(
                f"{self!r}: {cls.__name__} of {self.artifact_path} failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._feed_names = feed_names
        self._instance = instance
        logger.debug("%r serves class %s of %s", self, cls.__name__, self.artifact_path)

    def warmup(self) -> None:
        """The class's own ``warmup()`` when it has one (dummy zeros may not be valid input for
        it, e.g. encoded images); else the dummy batches of the other backends."""
        user_warmup = getattr(self._instance, "warmup", None) if self.is_loaded else None
        if not callable(user_warmup):
            super().warmup()
            return
        try:
            user_warmup()
        except Exception as exc:
            raise ModelConfigError(
                f"{self!r}: warmup() raised {type(exc).__name__}: {exc}"
            ) from exc
        logger.info("warmed up model %s version %s", self.name, self.version)

    def _run(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        raw = self._instance.predict_batch({name: feeds[name] for name in self._feed_names})
        if not isinstance(raw, Mapping):
            raise ModelConfigError(
                f"{self!r}: predict_batch returned {type(raw).__name__}, expected a dict of "
                f"output name -> array for {[spec.name for spec in self.config.outputs]}"
            )
        for spec in self.config.outputs:  # names and shapes: Model._check_outputs
            if spec.name in raw:
                self._check_datatype(spec.name, spec.datatype, raw[spec.name])
        return raw

    def _check_datatype(self, name: str, datatype: str, value: object) -> None:
        # numpy casts anything to anything; only a cast within the kind keeps the values' sense
        array = np.asarray(value)
        if datatype == "BYTES":
            ok = array.dtype.kind in "US" or (
                array.dtype.kind == "O"
                and all(isinstance(item, str | bytes) for item in array.reshape(-1))
            )
        else:
            ok = np.can_cast(array.dtype, NUMPY_DTYPES[datatype], casting="same_kind")
        if not ok:
            raise ModelConfigError(
                f"{self!r}: output {name!r} is {array.dtype}, model.yaml declares {datatype}"
            )
