"""ONNX Runtime backend: ``OnnxModel`` runs ``model.onnx`` on CUDA when asked and present, else CPU."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from streaminfer.models.base import Model, default_intra_op_threads, gpu_present
from streaminfer.models.errors import ModelConfigError

__all__ = ["OnnxModel"]

logger = logging.getLogger(__name__)


class OnnxModel(Model):
    """A model served by an ``onnxruntime.InferenceSession`` (thread-safe ``run``)."""

    _session: ort.InferenceSession

    @staticmethod
    def _cuda_available() -> bool:
        # onnxruntime-gpu lists its CUDA provider on machines without a GPU too: ask for a device
        return "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present()

    def _session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_num_threads or default_intra_op_threads(
            self.config.instances
        )
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # NOTE: spinning threads burn a core while idle; on a small box that core is the one the
        # worker's event loop and the other models need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _load_backend(self, feed_names: tuple[str, ...]) -> None:
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
            if hasattr(ort, "preload_dlls"):  # 1.21+: CUDA and cuDNN from the nvidia-* wheels
                ort.preload_dlls()
        try:
            session = ort.InferenceSession(
                str(self.artifact_path), sess_options=self._session_options(), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own pybind classes, not a common base
            raise ModelConfigError(f"{self!r}: cannot load {self.artifact_path}: {exc}") from exc

        graph_inputs = [node.name for node in session.get_inputs()]
        graph_outputs = {node.name for node in session.get_outputs()}
        missing_feeds = sorted(set(graph_inputs) - set(feed_names))
        missing_outputs = sorted({spec.name for spec in self.config.outputs} - graph_outputs)
        if missing_feeds or missing_outputs:
            raise ModelConfigError(
                f"{self!r}: {self.artifact_path.name} needs inputs {missing_feeds} that nothing "
                f"feeds, and lacks outputs {missing_outputs} that model.yaml declares"
            )
        if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            # ONNX Runtime falls back to CPU with only a log line when CUDA cannot start
            raise ModelConfigError(
                f"{self!r}: device cuda but ONNX Runtime could not start CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); the GPU build and its CUDA "
                "libraries come with: pip install 'streaminfer[gpu]'"
            )
        self._graph_inputs = graph_inputs
        self._output_names = [spec.name for spec in self.config.outputs]
        self._session = session
        logger.debug("%r uses providers %s", self, session.get_providers())

    def _run(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        # Feeds the graph does not take (e.g. token_type_ids for some exports) are dropped.
        arrays = self._session.run(
            self._output_names, {name: feeds[name] for name in self._graph_inputs}
        )
        return dict(zip(self._output_names, arrays, strict=True))
