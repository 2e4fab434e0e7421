"""Tests for models.torch_runtime.TorchModel on tiny TorchScript modules built by fixtures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from streaminfer.models.config import load_model_config
from streaminfer.models.errors import InferenceFailed, InvalidInput, ModelConfigError
from streaminfer.models.torch_runtime import TorchModel


@pytest.fixture
def load_torch(make_model_dir, classifier_yaml, tiny_torchscript):
    def load(kind: str = "tuple", **overrides) -> TorchModel:
        raw = classifier_yaml("torch", **overrides)
        config = load_model_config(make_model_dir(raw, files={"model.pt": tiny_torchscript(kind)}))
        model = TorchModel(config, device="cpu")
        model.load()
        return model

    return load


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_tuple_and_dict_outputs_are_named(load_torch, reference, kind):
    model = load_torch(kind)
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    outputs = model.predict_batch({"x": x})
    label, scores = reference(x)
    np.testing.assert_array_equal(outputs["label"], label)
    np.testing.assert_allclose(outputs["scores"], scores, rtol=1e-5)
    assert outputs["label"].dtype == np.int64 and outputs["scores"].dtype == np.float32


def test_a_single_tensor_is_the_only_output(load_torch, reference):
    model = load_torch("scores", outputs=[{"name": "scores", "datatype": "FP32", "shape": [2]}])
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(model.predict_batch({"x": x})["scores"], reference(x)[1])


def test_output_count_mismatch_is_a_config_error(load_torch):
    model = load_torch("scores")  # returns one tensor, yaml declares label and scores
    with pytest.raises(ModelConfigError, match="does not match the outputs"):
        model.predict_batch({"x": np.ones((1, 4), np.float32)})


def test_forward_failures_are_wrapped(load_torch):
    model = load_torch()

    def explode(*args):
        raise RuntimeError("shape mismatch deep inside")

    model._module = explode  # type: ignore[assignment]
    with pytest.raises(InferenceFailed, match="deep inside") as info:
        model.predict_batch({"x": np.ones((1, 4), np.float32)})
    assert info.value.retriable and isinstance(info.value.__cause__, RuntimeError)


def test_invalid_input_never_reaches_torch(load_torch):
    model = load_torch()
    with pytest.raises(InvalidInput, match="batch of 5 items"):
        model.predict_batch({"x": np.ones((5, 4), np.float32)})


def test_corrupt_artifact_is_a_config_error(make_model_dir, classifier_yaml):
    config = load_model_config(
        make_model_dir(classifier_yaml("torch"), files={"model.pt": b"not a zip archive"})
    )
    with pytest.raises(ModelConfigError, match="cannot load"):
        TorchModel(config, device="cpu").load()


def test_runs_without_autograd(load_torch, monkeypatch):
    model = load_torch()
    seen = []
    original = model._module

    def spy(*args):
        seen.append(torch.is_inference_mode_enabled())
        return original(*args)

    model._module = spy  # type: ignore[assignment]
    model.predict_batch({"x": np.ones((1, 4), np.float32)})
    assert seen == [True]


def test_intra_op_threads_are_applied_when_asked(make_model_dir, classifier_yaml, tiny_torchscript):
    config = load_model_config(
        make_model_dir(classifier_yaml("torch"), files={"model.pt": tiny_torchscript("tuple")})
    )
    before = torch.get_num_threads()
    try:
        TorchModel(config, device="cpu", intra_op_num_threads=1).load()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_concurrent_callers(load_torch, reference):
    model = load_torch()

    def run(i: int):
        x = np.full((1, 4), float(i), np.float32) * np.array([1, -2, 0.5, 1], np.float32)
        return model.predict_batch({"x": x})["scores"], reference(x)[1]

    with ThreadPoolExecutor(max_workers=8) as pool:
        for got, want in pool.map(run, range(200)):
            np.testing.assert_allclose(got, want, rtol=1e-5)
