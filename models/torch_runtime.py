"""PyTorch backend: ``TorchModel`` runs a TorchScript ``model.pt`` under ``torch.inference_mode``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from streaminfer.models.base import Model
from streaminfer.models.errors import ModelConfigError

__all__ = ["TorchModel"]

logger = logging.getLogger(__name__)


class TorchModel(Model):
    """A TorchScript module called with the feeds as positional arguments, in ``model.yaml`` order.

    The module returns one tensor, a tuple in the order of ``outputs:``, or a dict keyed by output
    name.
    """

    _module: torch.jit.ScriptModule

    @staticmethod
    def _cuda_available() -> bool:
        return torch.cuda.is_available()

    def _load_backend(self, feed_names: tuple[str, ...]) -> None:
        if self.intra_op_num_threads:
            # NOTE: process-wide in torch; only set when the caller asks for it.
            torch.set_num_threads(self.intra_op_num_threads)
        try:
            with warnings.catch_warnings():
                # NOTE: torch marks TorchScript deprecated, but it is the contract's artifact
                # format (SPEC section 2); the warning would fire on every model load.
                warnings.filterwarnings("ignore", r".*torch\.jit", DeprecationWarning)
                module = torch.jit.load(str(self.artifact_path), map_location=self.device)
        except Exception as exc:  # torch raises RuntimeError/ValueError for unreadable archives
            raise ModelConfigError(f"{self!r}: cannot load {self.artifact_path}: {exc}") from exc
        module.eval()
        self._feed_names = feed_names
        self._output_names = [spec.name for spec in self.config.outputs]
        self._torch_device = torch.device(self.device)
        self._module = module

    def _run(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        args = [
            torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self._torch_device)
            for name in self._feed_names
        ]
        with torch.inference_mode():
            result = self._module(*args)
        return {name: tensor.detach().cpu().numpy() for name, tensor in self._named(result).items()}

    def _named(self, result: object) -> dict[str, torch.Tensor]:
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, Mapping):
            return dict(result)
        if isinstance(result, tuple | list) and len(result) == len(self._output_names):
            return dict(zip(self._output_names, result, strict=True))
        raise ModelConfigError(
            f"{self!r} returned {type(result).__name__}, which does not match the outputs "
            f"{self._output_names} that model.yaml declares"
        )
