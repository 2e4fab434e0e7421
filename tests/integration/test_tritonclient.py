"""The gateway's /v2 routes driven by Triton's own Python client (``tritonclient[http]``), as a new
user would: health, readiness, metadata, and inference on every built-in task with JSON and
binary tensor data (BYTES and FP32 inputs), against the real worker, broker and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402 - after the skip

pytestmark = pytest.mark.integration

TASKS = {"text-embedding": ["text"], "image-classify": ["pixels"], "tabular-classify": ["features"]}


@pytest.fixture(scope="module")
def triton(stack) -> Iterator:
    client = httpclient.InferenceServerClient(
        url=stack.gateway_url.removeprefix("http://"), network_timeout=60
    )
    yield client
    client.close()


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool):
    return httpclient.InferInput(name, list(array.shape), datatype).set_data_from_numpy(
        array, binary_data=binary
    )


def outputs(*names: str, binary: bool):
    return [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]


def test_health_readiness_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "streaminfer" and "binary_tensor_data" in server["extensions"]
    for task, inputs in TASKS.items():
        assert triton.is_model_ready(task) and triton.is_model_ready(task, "1")
        metadata = triton.get_model_metadata(task)
        assert metadata["name"] == task and "1" in metadata["versions"]
        assert [i["name"] for i in metadata["inputs"]] == inputs
    with pytest.raises(InferenceServerException) as missing:
        triton.get_model_metadata("no-such-task")
    assert missing.value.status() == "404" and "no-such-task" in missing.value.message()


def test_text_embedding_bytes_binary_and_json(triton):
    texts = np.array(
        ["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply"],
        dtype=object,
    )
    # the client's defaults: binary input, every output binary (binary_data_output)
    binary = triton.infer(
        "text-embedding", [tensor("text", texts, "BYTES", binary=True)], request_id="emb-1"
    )
    response = binary.get_response()
    assert response["model_name"] == "text-embedding" and response["id"] == "emb-1"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == 3 * 384 * 4
    vectors = binary.as_numpy("embedding")
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2, (similar, unrelated)
    # all JSON: JSON input, the output asked as JSON
    as_json = triton.infer(
        "text-embedding",
        [tensor("text", texts, "BYTES", binary=False)],
        outputs=outputs("embedding", binary=False),
    )
    assert "data" in as_json.get_output("embedding")
    assert np.allclose(as_json.as_numpy("embedding"), vectors, atol=1e-5)


def test_image_classify_fp32_binary_and_json(triton):
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels, truth = digits.images[:24].astype(np.float32), digits.target[:24]
    binary = triton.infer("image-classify", [tensor("pixels", pixels, "FP32", binary=True)])
    labels, probabilities = binary.as_numpy("label"), binary.as_numpy("probabilities")
    assert labels.dtype == np.int64 and labels.shape == (24,) and probabilities.shape == (24, 10)
    assert ((labels >= 0) & (labels <= 9)).all() and (labels == probabilities.argmax(axis=1)).all()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4) and (probabilities >= 0).all()
    assert (labels == truth).mean() >= 0.9
    # JSON input on a pinned version; one output binary, the other JSON
    mixed = triton.infer(
        "image-classify",
        [tensor("pixels", pixels[:4], "FP32", binary=False)],
        model_version="1",
        outputs=[*outputs("label", binary=True), *outputs("probabilities", binary=False)],
    )
    assert mixed.get_response()["model_version"] == "1"
    assert "binary_data_size" in mixed.get_output("label")[
        "parameters"
    ] and "data" in mixed.get_output("probabilities")
    assert mixed.as_numpy("label").tolist() == labels[:4].tolist()
    assert np.allclose(mixed.as_numpy("probabilities"), probabilities[:4], atol=1e-5)


def test_tabular_classify_fp32_binary_and_json(triton):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rows = np.random.default_rng(7).choice(len(data.target), 32, replace=False)
    features, truth = data.data[rows].astype(np.float32), data.target[rows]
    binary = triton.infer("tabular-classify", [tensor("features", features, "FP32", binary=True)])
    labels, probability = binary.as_numpy("label"), binary.as_numpy("probability")
    assert labels.shape == (32,) and probability.shape == (32,) and set(labels.tolist()) <= {0, 1}
    assert ((probability >= 0) & (probability <= 1)).all()
    assert (labels == (probability >= 0.5)).all()  # probability is P(label = 1)
    assert (labels == truth).mean() >= 0.9
    as_json = triton.infer(
        "tabular-classify",
        [tensor("features", features, "FP32", binary=False)],
        outputs=outputs("label", "probability", binary=False),
    )
    assert as_json.as_numpy("label").tolist() == labels.tolist()
    assert np.allclose(as_json.as_numpy("probability"), probability, atol=1e-6)


def test_errors_raise_with_the_gateways_message(triton):
    with pytest.raises(InferenceServerException) as wrong:
        triton.infer(
            "text-embedding",
            [tensor("text", np.zeros((1,), dtype=np.float32), "FP32", binary=True)],
        )
    assert wrong.value.status() == "422" and "text" in wrong.value.message()
    with pytest.raises(InferenceServerException) as missing:
        triton.infer(
            "image-classify",
            [tensor("pixels", np.zeros((1, 8, 8), dtype=np.float32), "FP32", binary=True)],
            model_version="99",
        )
    assert missing.value.status() == "404" and "99" in missing.value.message()
