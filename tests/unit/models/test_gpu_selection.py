"""The GPU path, checked on a CPU machine: with a GPU reported present, device auto/cuda puts
CUDAExecutionProvider first for ONNX Runtime and maps TorchScript onto cuda; without one, cpu."""

from __future__ import annotations

import pytest

from streaminfer.models.config import load_model_config
from streaminfer.models.onnx_runtime import OnnxModel


@pytest.fixture
def onnx_config(make_model_dir, classifier_yaml, tiny_onnx):
    return load_model_config(make_model_dir(classifier_yaml("onnxruntime", device="auto"),
                                            files={"model.onnx": tiny_onnx}))


def sessions_opened(monkeypatch) -> list[list[str]]:
    import onnxruntime

    opened: list[list[str]] = []
    real = onnxruntime.InferenceSession

    def recording(path, sess_options=None, providers=None):
        opened.append(list(providers))
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return opened


@pytest.mark.parametrize("gpu,expected", [(True, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
                                          (False, ["CPUExecutionProvider"])])
def test_onnx_providers_follow_the_device(monkeypatch, onnx_config, gpu, expected):
    monkeypatch.setattr(OnnxModel, "_cuda_available", staticmethod(lambda: gpu))
    opened = sessions_opened(monkeypatch)
    model = OnnxModel(onnx_config)
    model.load()
    assert model.device == ("cuda" if gpu else "cpu")
    assert opened == [expected]


def test_torch_maps_onto_the_resolved_device(monkeypatch, make_model_dir, classifier_yaml, tiny_torchscript):
    import torch

    from streaminfer.models.torch_runtime import TorchModel

    config = load_model_config(make_model_dir(classifier_yaml("torch", device="auto"),
                                              files={"model.pt": tiny_torchscript("tuple")}))
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
