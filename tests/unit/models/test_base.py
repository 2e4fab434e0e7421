"""Tests for models.base: device resolution, dummy inputs, thread defaults, the Model template."""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.models.base import Model, default_intra_op_threads, dummy_inputs, resolve_device
from streaminfer.models.config import load_model_config
from streaminfer.models.errors import ModelConfigError, ModelError


@pytest.mark.parametrize(
    ("requested", "gpu", "expected"),
    [
        ("auto", True, "cuda"),
        ("auto", False, "cpu"),
        ("cuda", True, "cuda"),
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
    ],
)
def test_resolve_device(requested, gpu, expected):
    assert resolve_device(requested, cuda_available=lambda: gpu) == expected


def test_cpu_never_probes_for_a_gpu():
    def probe() -> bool:
        raise AssertionError("probed")

    assert resolve_device("cpu", cuda_available=probe) == "cpu"


def test_cuda_without_gpu_is_a_config_error_naming_the_fix():
    with pytest.raises(ModelConfigError, match=r"no GPU .*pip install 'streaminfer\[gpu\]'"):
        resolve_device("cuda", cuda_available=lambda: False)


def test_unknown_device_is_a_config_error():
    with pytest.raises(ModelConfigError, match="device must be one of"):
        resolve_device("tpu", cuda_available=lambda: True)


def test_default_probe_answers_on_this_machine():
    assert resolve_device("auto") in ("cpu", "cuda")


def test_default_intra_op_threads_is_small_and_positive(monkeypatch):
    assert 1 <= default_intra_op_threads() <= 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_intra_op_threads() == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_intra_op_threads() == 2


def test_dummy_inputs_follow_the_signature(make_model_dir, classifier_yaml, text_yaml):
    raw = classifier_yaml(
        "onnxruntime",
        inputs=[
            {"name": "x", "datatype": "FP16", "shape": [4, -1]},
            {"name": "t", "datatype": "BYTES", "shape": []},
        ],
    )
    config = load_model_config(make_model_dir(raw))
    inputs = dummy_inputs(config, batch_size=3)
    assert inputs["x"].shape == (3, 4, 1) and inputs["x"].dtype == np.float16
    assert inputs["t"].shape == (3,) and all(isinstance(t, str) and t for t in inputs["t"])


class _Recorder(Model):
    """A Model whose backend echoes its feeds, to test the template in isolation."""

    def _load_backend(self, feed_names):
        self.feed_names = feed_names

    def _run(self, feeds):
        x = feeds["x"]
        return {"label": np.zeros(len(x), np.int32), "scores": x[:, :2].astype(np.float64)}


def test_template_validates_and_casts_outputs(make_model_dir, classifier_yaml):
    config = load_model_config(
        make_model_dir(classifier_yaml("onnxruntime"), files={"model.onnx": b"-"})
    )
    model = _Recorder(config, device="cpu")
    with pytest.raises(ModelError, match="not loaded"):
        model.predict_batch({"x": np.zeros((1, 4), np.float32)})
    model.load()
    assert model.is_loaded and model.feed_names == ("x",)
    assert (model.name, model.version, model.device) == (config.name, "1", "cpu")
    outputs = model.predict_batch({"x": np.ones((2, 4), np.float32)})
    # Outputs come back in the declared datatypes whatever the backend produced.
    assert outputs["label"].dtype == np.int64 and outputs["scores"].dtype == np.float32


def test_missing_artifact_is_a_config_error(make_model_dir, classifier_yaml):
    config = load_model_config(make_model_dir(classifier_yaml("onnxruntime")))
    with pytest.raises(ModelConfigError, match="artifact .* is missing"):
        _Recorder(config, device="cpu").load()


def test_wrong_output_shape_is_a_config_error(make_model_dir, classifier_yaml):
    class Wrong(_Recorder):
        def _run(self, feeds):
            return {"label": np.zeros(1, np.int64), "scores": np.zeros((1, 3), np.float32)}

    config = load_model_config(
        make_model_dir(classifier_yaml("onnxruntime"), files={"model.onnx": b"-"})
    )
    model = Wrong(config, device="cpu")
    model.load()
    with pytest.raises(ModelConfigError, match=r"'scores' has shape \[1, 3\].*declares \[1, 2\]"):
        model.predict_batch({"x": np.zeros((1, 4), np.float32)})
