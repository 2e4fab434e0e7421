"""The ``Model`` interface every runtime implements, and device resolution.

A model serves one version of one task. ``predict_batch`` takes and returns the *contract*
tensors of ``model.yaml`` (leading dim N); declared pre-processing (e.g. tokenisation) happens
inside it, so callers never see backend-specific feeds.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import numpy as np

from streaminfer.models.config import DEVICES, ModelConfig
from streaminfer.models.errors import InferenceFailed, ModelConfigError, ModelError
from streaminfer.models.preprocess import Preprocessor, build_preprocessor
from streaminfer.models.signature import NUMPY_DTYPES
from streaminfer.models.validation import validate_tensors

__all__ = [
    "Model",
    "default_intra_op_threads",
    "dummy_inputs",
    "gpu_present",
    "require_cuda",
    "resolve_device",
]

logger = logging.getLogger(__name__)


def resolve_device(requested: str, cuda_available: Callable[[], bool] | None = None) -> str:
    """``"cpu"`` or ``"cuda"`` for a requested ``auto|cpu|cuda``.

    ``cuda_available`` probes for a GPU (default: torch if installed, else onnxruntime's
    providers). ``auto`` is what serves on laptops and GPU nodes alike; an explicit ``cuda``
    without a GPU is a configuration error, raised when the model loads (a worker started for a
    GPU that silently ran on CPU would miss every latency it was sized for).
    """
    if requested not in DEVICES:
        raise ModelConfigError(f"device must be one of {list(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    probe = cuda_available or gpu_present
    if probe():
        return "cuda"
    if requested == "cuda":
        raise ModelConfigError(
            "device cuda requested but no GPU is available (torch sees no CUDA device); "
            "use device auto or cpu, or install the GPU build: pip install 'streaminfer[gpu]'"
        )
    return "cpu"


def require_cuda() -> None:
    """Raise ``ModelConfigError`` unless torch sees a GPU and ONNX Runtime is its GPU build: a
    worker told ``cuda`` checks at start instead of failing its first batches."""
    import onnxruntime

    if not gpu_present():
        resolve_device("cuda", lambda: False)  # raises, naming the fix
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ModelConfigError(
            "device cuda but the installed ONNX Runtime is the CPU build; "
            "install the GPU build: pip install 'streaminfer[gpu]'"
        )


def gpu_present() -> bool:
    """Whether a CUDA device is there (torch asks the driver)."""
    try:
        import torch
    except ImportError:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return bool(torch.cuda.is_available())


def default_intra_op_threads(instances: int = 1) -> int:
    """Threads per backend op for each of ``instances`` concurrent copies of a model: the CPUs
    this process may use, shared out among the instances, capped at 4.

    Beyond 4 threads small batches gain little, and a worker also runs an event loop and often
    several models on the same cores. Splitting the cores among instances rather than giving each
    all of them matters on small boxes: an op split over 2 threads waits for the slower one, so
    when the broker or the event loop takes part of a core, a 2-thread batch slows down far more
    than the share it lost (measured on 2 vCPUs: 147 -> 100 items/s beside a process using half a
    core, where 2 instances x 1 thread went 153 -> 119).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // max(1, instances)))


def dummy_inputs(config: ModelConfig, batch_size: int = 1) -> dict[str, np.ndarray]:
    """Valid contract inputs of ``batch_size`` items, for warm-up and smoke tests."""
    inputs: dict[str, np.ndarray] = {}
    for spec in config.inputs:
        shape = (batch_size, *(dim if dim > 0 else 1 for dim in spec.shape))
        if spec.datatype == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill("warm up the model")
        else:
            array = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        inputs[spec.name] = array
    return inputs


class Model(ABC):
    """One loaded version of one task's model.

    ``predict_batch`` is synchronous and safe to call from several threads at once (both
    backends' sessions and the tokenizer are read-only after ``load``).
    """

    def __init__(
        self,
        config: ModelConfig,
        version: str | None = None,
        device: str | None = None,
        intra_op_num_threads: int | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.path = config.version_path(version)  # raises ModelVersionNotFound
        self.version = self.path.name
        self.device = resolve_device(device or config.device, self._cuda_available)
        self.intra_op_num_threads = intra_op_num_threads
        self._preprocessor: Preprocessor | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} v{self.version} on {self.device}>"

    @property
    def is_loaded(self) -> bool:
        return self._preprocessor is not None

    @property
    def artifact_path(self):
        return self.path / self.config.artifact

    def load(self) -> None:
        """Open the artifact on ``device``; raises ModelConfigError when it is unusable."""
        if self.is_loaded:
            return
        if not self.artifact_path.is_file():
            raise ModelConfigError(f"{self!r}: artifact {self.artifact_path} is missing")
        preprocessor = build_preprocessor(self.config, self.path)
        self._load_backend(preprocessor.feed_names)
        self._preprocessor = preprocessor
        logger.info("loaded model %s version %s on %s", self.name, self.version, self.device)

    def warmup(self) -> None:
        """Run dummy batches (1 item, then a full batch) so the first request is not slow."""
        for batch_size in sorted({1, self.config.max_batch_size}):
            self.predict_batch(dummy_inputs(self.config, batch_size))
        logger.info("warmed up model %s version %s", self.name, self.version)

    def predict_batch(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Contract outputs (leading dim N) for contract inputs of N items.

        Raises InvalidInput for inputs that break the signature and InferenceFailed (retriable)
        when the backend itself fails.
        """
        if self._preprocessor is None:
            raise ModelError(f"{self!r} is not loaded; call load() first")
        validate_tensors(self.config, inputs)
        batch_size = next(iter(inputs.values())).shape[0]
        feeds = self._preprocessor(inputs)
        try:
            raw = self._run(feeds)
        except ModelError:
            raise
        except Exception as exc:  # any backend failure enters our error tree here
            raise InferenceFailed(f"{self.name} v{self.version}: {exc}") from exc
        return self._check_outputs(raw, batch_size)

    def _check_outputs(self, raw: Mapping[str, np.ndarray], batch_size: int) -> dict:
        outputs: dict[str, np.ndarray] = {}
        for spec in self.config.outputs:
            if spec.name not in raw:
                raise ModelConfigError(f"{self!r} produced no output {spec.name!r}")
            array = np.asarray(raw[spec.name])
            expected = (batch_size, *spec.shape)
            if array.ndim != len(expected) or any(
                want != -1 and want != got for want, got in zip(expected, array.shape, strict=True)
            ):
                raise ModelConfigError(
                    f"{self!r}: output {spec.name!r} has shape {list(array.shape)}, "
                    f"model.yaml declares {list(expected)}"
                )
            outputs[spec.name] = array.astype(NUMPY_DTYPES[spec.datatype], copy=False)
        return outputs

    @staticmethod
    def _cuda_available() -> bool:
        return gpu_present()

    @abstractmethod
    def _load_backend(self, feed_names: tuple[str, ...]) -> None:
        """Open the artifact; ``feed_names`` are what the preprocessor will hand to ``_run``."""

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run the backend on preprocessed feeds; return arrays keyed by output name."""
