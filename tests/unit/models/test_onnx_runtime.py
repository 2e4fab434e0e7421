"""Tests for models.onnx_runtime.OnnxModel on tiny graphs built by fixtures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from streaminfer.models.config import load_model_config
from streaminfer.models.errors import InferenceFailed, InvalidInput, ModelConfigError
from streaminfer.models.onnx_runtime import OnnxModel


@pytest.fixture
def classifier(make_model_dir, classifier_yaml, tiny_onnx):
    config = load_model_config(
        make_model_dir(classifier_yaml("onnxruntime"), files={"model.onnx": tiny_onnx})
    )
    model = OnnxModel(config, intra_op_num_threads=1)
    model.load()
    return model


@pytest.fixture
def text_model(make_model_dir, text_yaml, tiny_text_onnx, tiny_tokenizer):
    files = {"model.onnx": tiny_text_onnx, "tokenizer.json": tiny_tokenizer}
    model = OnnxModel(load_model_config(make_model_dir(text_yaml(max_length=4), files=files)))
    model.load()
    return model


def test_predicts_like_numpy(classifier, reference):
    x = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    outputs = classifier.predict_batch({"x": x})
    label, scores = reference(x)
    assert set(outputs) == {"label", "scores"}
    np.testing.assert_array_equal(outputs["label"], label)
    np.testing.assert_allclose(outputs["scores"], scores, rtol=1e-6)
    assert outputs["label"].dtype == np.int64 and outputs["scores"].shape == (4, 2)


def test_session_settings(classifier):
    assert classifier.device == "cpu"
    options = classifier._session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert classifier._session.get_providers() == ["CPUExecutionProvider"]


def test_warmup_runs_one_item_and_a_full_batch(classifier, monkeypatch):
    sizes = []
    original = classifier.predict_batch
    monkeypatch.setattr(
        classifier,
        "predict_batch",
        lambda inputs: sizes.append(len(inputs["x"])) or original(inputs),
    )
    classifier.warmup()
    assert sizes == [1, 4]


def test_bad_input_is_invalid_input_not_a_backend_failure(classifier):
    with pytest.raises(InvalidInput, match="expected shape"):
        classifier.predict_batch({"x": np.zeros((1, 5), np.float32)})
    with pytest.raises(InvalidInput, match="expected datatype FP32"):
        classifier.predict_batch({"x": np.zeros((1, 4), np.float64)})


def test_backend_exceptions_are_wrapped_as_retriable(classifier, monkeypatch):
    boom = RuntimeError("CUDA out of memory")

    def fail(*args, **kwargs):
        raise boom

    monkeypatch.setattr(classifier, "_session", type("Session", (), {"run": staticmethod(fail)})())
    with pytest.raises(InferenceFailed, match="CUDA out of memory") as info:
        classifier.predict_batch({"x": np.zeros((1, 4), np.float32)})
    assert info.value.retriable and info.value.__cause__ is boom


def test_corrupt_artifact_is_a_config_error(make_model_dir, classifier_yaml):
    config = load_model_config(
        make_model_dir(classifier_yaml("onnxruntime"), files={"model.onnx": b"not onnx"})
    )
    with pytest.raises(ModelConfigError, match="cannot load"):
        OnnxModel(config).load()


def test_declared_output_missing_from_graph(make_model_dir, classifier_yaml, tiny_onnx):
    raw = classifier_yaml(
        "onnxruntime", outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [2]}]
    )
    config = load_model_config(make_model_dir(raw, files={"model.onnx": tiny_onnx}))
    with pytest.raises(ModelConfigError, match=r"lacks outputs \['probabilities'\]"):
        OnnxModel(config).load()


def test_graph_input_nothing_feeds(make_model_dir, classifier_yaml, tiny_onnx):
    raw = classifier_yaml("onnxruntime", inputs=[{"name": "y", "datatype": "FP32", "shape": [4]}])
    config = load_model_config(make_model_dir(raw, files={"model.onnx": tiny_onnx}))
    with pytest.raises(ModelConfigError, match=r"needs inputs \['x'\]"):
        OnnxModel(config).load()


def test_tokenizes_inside_predict_batch(text_model):
    texts = np.array(["hello world", "kafka", b"stream stream hello"], dtype=object)
    outputs = text_model.predict_batch({"text": texts})
    # Padding to the longest text must not change any item's count: the mask hides it.
    np.testing.assert_array_equal(outputs["token_count"], [2, 1, 3])
    np.testing.assert_array_equal(outputs["id_sum"], [2 + 3, 4, 5 + 5 + 2])


def test_truncates_at_max_length_and_maps_unknown_words(text_model):
    outputs = text_model.predict_batch({"text": np.array(["hello " * 10, "zebra"], dtype=object)})
    np.testing.assert_array_equal(outputs["token_count"], [4, 1])
    np.testing.assert_array_equal(outputs["id_sum"], [8, 1])  # [UNK] is id 1


def test_missing_tokenizer_is_a_config_error(make_model_dir, text_yaml, tiny_text_onnx):
    config = load_model_config(make_model_dir(text_yaml(), files={"model.onnx": tiny_text_onnx}))
    with pytest.raises(ModelConfigError, match="cannot load tokenizer"):
        OnnxModel(config).load()


def test_concurrent_callers_get_their_own_results(text_model, classifier, reference):
    def embed(i: int):
        texts = np.array(["hello " * (i % 4 + 1)], dtype=object)
        return int(text_model.predict_batch({"text": texts})["token_count"][0]), i % 4 + 1

    def classify(i: int):
        x = np.full((1, 4), float(i), np.float32) * np.array([1, -1, 0.5, 2], np.float32)
        return classifier.predict_batch({"x": x})["scores"], reference(x)[1]

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(embed, range(200)))
        scores = list(pool.map(classify, range(200)))
    assert all(got == want for got, want in counts)
    for got, want in scores:
        np.testing.assert_allclose(got, want, rtol=1e-6)
