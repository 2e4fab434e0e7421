"""Fixtures for the ``models`` unit tests: tiny models exported on the fly, and repositories.

The tiny classifier computes ``scores = x @ WEIGHTS + BIAS`` and ``label = argmax(scores)``, so
every runtime's output can be checked against numpy. The tiny text model counts tokens, which
makes tokenisation, per-batch padding and truncation observable.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]], dtype=np.float32)
BIAS = np.array([0.5, -0.5], dtype=np.float32)
VOCAB = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "kafka": 4, "stream": 5}


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, scores) the tiny classifier must produce."""
    scores = x.astype(np.float32) @ WEIGHTS + BIAS
    return scores.argmax(axis=1).astype(np.int64), scores


def _classifier_yaml(backend: str, **overrides) -> dict:
    config = {
        "task": "tiny",
        "backend": backend,
        "max_batch_size": 4,
        "max_batch_delay_ms": 2,
        "warmup": True,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": []},
            {"name": "scores", "datatype": "FP32", "shape": [2]},
        ],
    }
    config.update(overrides)
    return config


def _text_yaml(max_length: int = 4, **overrides) -> dict:
    config = {
        "task": "tiny-text",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": []}],
        "outputs": [
            {"name": "token_count", "datatype": "INT64", "shape": []},
            {"name": "id_sum", "datatype": "INT64", "shape": []},
        ],
        "preprocess": {"kind": "tokenize", "input": "text", "max_length": max_length},
    }
    config.update(overrides)
    return config


# Helpers are handed out as fixtures so tests never import conftest by module name.
@pytest.fixture
def reference():
    """``reference(x) -> (label, scores)`` of the tiny classifier, in numpy."""
    return _reference


@pytest.fixture
def classifier_yaml():
    """``classifier_yaml(backend, **overrides)``: model.yaml contents of the tiny classifier."""
    return _classifier_yaml


@pytest.fixture
def text_yaml():
    """``text_yaml(max_length=4, **overrides)``: model.yaml contents of the tiny text model."""
    return _text_yaml


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 9  # what every onnxruntime >= 1.16 reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """ONNX graph: x FP32 [N,4] -> label INT64 [N], scores FP32 [N,2]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def tiny_text_onnx(tmp_path_factory) -> Path:
    """ONNX graph: (input_ids, attention_mask) -> token_count, id_sum (both INT64 [N])."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["attention_mask", "axes"], ["token_count"], keepdims=0),
            helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axes"], ["id_sum"], keepdims=0),
        ],
        "tiny_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"]),
        ],
        [
            helper.make_tensor_value_info("token_count", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("id_sum", TensorProto.INT64, ["N"]),
        ],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, tmp_path_factory.mktemp("onnx_text") / "model.onnx")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer.json over VOCAB, whitespace split, no special tokens."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


class TinyTuple(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weights = torch.nn.Parameter(torch.from_numpy(WEIGHTS.copy()))
        self.bias = torch.nn.Parameter(torch.from_numpy(BIAS.copy()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = x @ self.weights + self.bias
        return scores.argmax(dim=1), scores


class TinyDict(TinyTuple):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        scores = x @ self.weights + self.bias
        return {"scores": scores, "label": scores.argmax(dim=1)}


class TinyScoresOnly(TinyTuple):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x @ self.weights + self.bias


@pytest.fixture(scope="session")
def tiny_torchscript(tmp_path_factory) -> Callable[[str], Path]:
    """TorchScript files of the tiny classifier: ``"tuple"``, ``"dict"`` or ``"scores"`` output."""
    root = tmp_path_factory.mktemp("torchscript")
    modules = {"tuple": TinyTuple, "dict": TinyDict, "scores": TinyScoresOnly}
    paths = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit", DeprecationWarning)
        for kind, module in modules.items():
            paths[kind] = root / f"{kind}.pt"
            torch.jit.script(module()).save(str(paths[kind]))
    return paths.__getitem__


@pytest.fixture
def make_model_dir(tmp_path) -> Callable[..., Path]:
    """Write ``<repo>/<dirname>/model.yaml`` and version dirs holding the given files.

    ``files`` maps a file name inside each version dir to a source path (copied) or bytes.
    """
    repo = tmp_path / "repo"

    def make(
        config: dict, versions=("1",), files: dict | None = None, dirname: str | None = None
    ) -> Path:
        model_dir = repo / (dirname or config.get("task", "tiny"))
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        for version in versions:
            version_dir = model_dir / str(version)
            version_dir.mkdir(exist_ok=True)
            for name, source in (files or {}).items():
                if isinstance(source, bytes):
                    (version_dir / name).write_bytes(source)
                else:
                    shutil.copyfile(source, version_dir / name)
        return model_dir

    make.repo = repo  # type: ignore[attr-defined]
    return make
