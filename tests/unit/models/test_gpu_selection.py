"""The GPU path, checked on a CPU machine: with a GPU reported present, device auto/cuda puts
CUDAExecutionProvider first for ONNX Runtime and maps TorchScript onto cuda; without one, cpu."""

from __future__ import annotations

import pytest

from streaminfer.models.config import load_model_config
from streaminfer.models.onnx_runtime import OnnxModel


@pytest.fixture
def onnx_config(make_model_dir, classifier_yaml, tiny_onnx):
    return load_model_config(
        make_model_dir(
            classifier_yaml("onnxruntime", device="auto"), files={"model.onnx": tiny_onnx}
        )
    )


def sessions_opened(monkeypatch, cuda_starts: bool = True) -> list[list[str]]:
    """Record the providers asked for; the session runs on CPU and reports CUDA as running
    when ``cuda_starts`` (ONNX Runtime drops a provider it cannot start, with only a log line)."""
    import onnxruntime

    opened: list[list[str]] = []
    real = onnxruntime.InferenceSession

    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            opened.append(list(providers))
            self._real = real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
            self._providers = [p for p in providers if cuda_starts or p != "CUDAExecutionProvider"]

        def get_providers(self):
            return self._providers

        def __getattr__(self, name):
            return getattr(self._real, name)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    return opened


@pytest.mark.parametrize(
    "gpu,expected",
    [(True, ["CUDAExecutionProvider", "CPUExecutionProvider"]), (False, ["CPUExecutionProvider"])],
)
def test_onnx_providers_follow_the_device(monkeypatch, onnx_config, gpu, expected):
    monkeypatch.setattr(OnnxModel, "_cuda_available", staticmethod(lambda: gpu))
    opened = sessions_opened(monkeypatch)
    model = OnnxModel(onnx_config)
    model.load()
    assert model.device == ("cuda" if gpu else "cpu")
    assert opened == [expected]


def test_torch_maps_onto_the_resolved_device(
    monkeypatch, make_model_dir, classifier_yaml, tiny_torchscript
):
    import torch

    from streaminfer.models.torch_runtime import TorchModel

    config = load_model_config(
        make_model_dir(
            classifier_yaml("torch", device="auto"), files={"model.pt": tiny_torchscript("tuple")}
        )
    )
    monkeypatch.setattr(TorchModel, "_cuda_available", staticmethod(lambda: True))
    seen = {}
    real_load = torch.jit.load

    def recording(path, map_location=None, **kwargs):
        seen["map_location"] = str(map_location)
        return real_load(path, map_location="cpu", **kwargs)

    monkeypatch.setattr(torch.jit, "load", recording)
    model = TorchModel(config)
    assert model.device == "cuda"
    try:
        model.load()
    except Exception:
        pass  # moving inputs onto cuda fails on this CPU box during warmup; the mapping is what we check
    assert seen["map_location"].startswith("cuda")


def test_cuda_that_onnx_runtime_cannot_start_fails_the_load_naming_the_fix(
    monkeypatch, onnx_config
):
    from streaminfer.models.errors import ModelConfigError

    monkeypatch.setattr(OnnxModel, "_cuda_available", staticmethod(lambda: True))
    sessions_opened(monkeypatch, cuda_starts=False)
    model = OnnxModel(onnx_config, device="cuda")
    with pytest.raises(
        ModelConfigError, match=r"could not start CUDAExecutionProvider.*streaminfer\[gpu\]"
    ):
        model.load()


def test_a_gpu_build_of_onnx_runtime_without_a_gpu_is_not_cuda(monkeypatch, onnx_config):
    """onnxruntime-gpu, the default wheel on Linux x86_64, lists CUDA on CPU-only machines too."""
    import onnxruntime

    import streaminfer.models.onnx_runtime as onnx_runtime

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(onnx_runtime, "gpu_present", lambda: False)
    assert OnnxModel(onnx_config).device == "cpu"
