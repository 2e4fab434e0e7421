"""``ModelRepository``: find tasks in a model repository directory and hand out loaded models."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from streaminfer.models.base import Model
from streaminfer.models.config import ModelConfig, load_repository_configs
from streaminfer.models.errors import ModelConfigError, ModelNotFound, ModelVersionNotFound

__all__ = ["ModelRepository", "create_model"]

logger = logging.getLogger(__name__)


def create_model(
    config: ModelConfig,
    version: str | None = None,
    device: str | None = None,
    intra_op_num_threads: int | None = None,
) -> Model:
    """An unloaded model of the runtime ``config.backend`` names."""
    # Imported here so a process serving only ONNX models never imports torch, and vice versa.
    if config.backend == "onnxruntime":
        from streaminfer.models.onnx_runtime import OnnxModel as runtime
    elif config.backend == "torch":
        from streaminfer.models.torch_runtime import TorchModel as runtime
    elif config.backend == "python":
        from streaminfer.models.python_runtime import PythonModel as runtime
    else:  # load_model_config already refuses this; kept for hand-built configs
        raise ModelConfigError(f"unknown backend {config.backend!r}")
    return runtime(config, version, device, intra_op_num_threads)


class ModelRepository:
    """Configs of ``<path>/<model>/model.yaml`` keyed by task, and a cache of loaded models.

    ``device`` ``"auto"`` defers to each ``model.yaml``; ``"cpu"``/``"cuda"`` override them all.
    Thread-safe: concurrent ``load`` calls for one (task, version) load it once.
    """

    def __init__(
        self, path: Path, device: str = "auto", intra_op_num_threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.device = device
        self.intra_op_num_threads = intra_op_num_threads
        self._configs: dict[str, ModelConfig] | None = None
        self._models: dict[tuple[str, str], Model] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}

    @property
    def configs(self) -> dict[str, ModelConfig]:
        """Configs by task, read on first use; call ``refresh`` to pick up changes on disk."""
        if self._configs is None:
            self.refresh()
        assert self._configs is not None
        return dict(self._configs)

    def refresh(self) -> None:
        """Re-read every ``model.yaml`` and version directory; loaded models stay cached."""
        before = self._versions()
        self._configs = load_repository_configs(self.path)
        # polled by workers for hot reload: only a change is worth an INFO line
        log = logger.info if self._versions() != before else logger.debug
        log("model repository %s has %s", self.path, self._versions())

    def _versions(self) -> dict[str, tuple[str, ...]] | None:
        if self._configs is None:
            return None
        return {task: config.versions for task, config in sorted(self._configs.items())}

    def get_config(self, task: str) -> ModelConfig:
        configs = self.configs
        if task not in configs:
            raise ModelNotFound(
                f"no model serves task {task!r} in {self.path}; known tasks: {sorted(configs)}"
            )
        return configs[task]

    def loaded_models(self) -> list[Model]:
        with self._lock:
            return list(self._models.values())

    def unload(self, task: str, version: str) -> Model | None:
        """Forget the loaded model of ``task`` at ``version`` (its memory goes with the last user)."""
        with self._lock:
            return self._models.pop((task, str(version)), None)

    def load(self, task: str, version: str | None = None) -> Model:
        """The loaded and warmed-up model of ``task`` at ``version`` (default: the task's default)."""
        config = self.get_config(task)
        version = None if version is None else str(version)
        try:
            version_dir = config.version_path(version)
        except ModelVersionNotFound:
            # A version may have been built since the configs were read: look once more.
            self.refresh()
            config = self.get_config(task)
            version_dir = config.version_path(version)
        key = (task, version_dir.name)

        with self._lock:
            if key in self._models:
                return self._models[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # per key, so a slow load does not block other tasks
            with self._lock:
                if key in self._models:
                    return self._models[key]
            device = None if self.device == "auto" else self.device
            model = create_model(config, key[1], device, self.intra_op_num_threads)
            model.load()
            if config.warmup:
                model.warmup()
            with self._lock:
                self._models[key] = model
        return model
