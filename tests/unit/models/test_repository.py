"""Tests for models.repository.ModelRepository on tiny models of both backends."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from streaminfer.models.errors import ModelNotFound, ModelVersionNotFound
from streaminfer.models.onnx_runtime import OnnxModel
from streaminfer.models.repository import ModelRepository, create_model
from streaminfer.models.torch_runtime import TorchModel


@pytest.fixture
def repo(make_model_dir, classifier_yaml, tiny_onnx, tiny_torchscript):
    make_model_dir(
        classifier_yaml("onnxruntime", task="tiny-onnx"),
        versions=("1", "2"),
        files={"model.onnx": tiny_onnx},
        dirname="onnx-model",
    )
    make_model_dir(
        classifier_yaml("torch", task="tiny-torch", warmup=False),
        files={"model.pt": tiny_torchscript("tuple")},
    )
    return ModelRepository(make_model_dir.repo, intra_op_num_threads=1)


def test_configs_are_keyed_by_task(repo):
    assert sorted(repo.configs) == ["tiny-onnx", "tiny-torch"]
    assert repo.get_config("tiny-onnx").versions == ("1", "2")


def test_unknown_task(repo):
    with pytest.raises(ModelNotFound, match=r"known tasks: \['tiny-onnx', 'tiny-torch'\]") as info:
        repo.get_config("nope")
    assert info.value.code == "TASK_NOT_FOUND"
    with pytest.raises(ModelNotFound):
        repo.load("nope")


def test_load_picks_the_runtime_and_default_version(repo, reference):
    onnx_model = repo.load("tiny-onnx")
    torch_model = repo.load("tiny-torch")
    assert isinstance(onnx_model, OnnxModel) and isinstance(torch_model, TorchModel)
    assert onnx_model.version == "2" and torch_model.version == "1"
    assert onnx_model.is_loaded and torch_model.is_loaded
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(onnx_model.predict_batch({"x": x})["label"], reference(x)[0])


def test_models_are_cached_per_task_and_version(repo):
    default = repo.load("tiny-onnx")
    assert repo.load("tiny-onnx") is default
    assert repo.load("tiny-onnx", "2") is default  # the default *is* version 2
    first = repo.load("tiny-onnx", "1")
    assert first is not default and first.version == "1"
    assert {(m.config.task, m.version) for m in repo.loaded_models()} == {
        ("tiny-onnx", "1"),
        ("tiny-onnx", "2"),
    }


def test_unknown_version(repo):
    with pytest.raises(ModelVersionNotFound, match="no version '7'"):
        repo.load("tiny-onnx", "7")


def test_newly_built_version_is_found_without_refresh(repo, make_model_dir):
    repo.load("tiny-torch")
    shutil.copytree(
        make_model_dir.repo / "tiny-torch" / "1", make_model_dir.repo / "tiny-torch" / "5"
    )
    assert repo.load("tiny-torch", "5").version == "5"
    assert repo.get_config("tiny-torch").default_version == "5"


def test_refresh_picks_up_a_new_task(repo, make_model_dir, classifier_yaml, tiny_onnx):
    assert "late" not in repo.configs
    make_model_dir(classifier_yaml("onnxruntime", task="late"), files={"model.onnx": tiny_onnx})
    assert "late" not in repo.configs  # cached until asked
    repo.refresh()
    assert repo.load("late").config.task == "late"


def test_warmup_follows_the_yaml(repo, monkeypatch):
    warmed = []
    for runtime in (OnnxModel, TorchModel):
        monkeypatch.setattr(runtime, "warmup", lambda self: warmed.append(self.config.task))
    repo.load("tiny-onnx")
    repo.load("tiny-torch")  # warmup: false
    assert warmed == ["tiny-onnx"]


def test_concurrent_loads_load_once(repo, monkeypatch):
    loads = []
    original = OnnxModel.load
    barrier = threading.Barrier(6)

    def slow_load(self):
        loads.append(self.version)
        original(self)

    monkeypatch.setattr(OnnxModel, "load", slow_load)

    def load(_):
        barrier.wait()
        return repo.load("tiny-onnx")

    with ThreadPoolExecutor(max_workers=6) as pool:
        models = list(pool.map(load, range(6)))
    assert loads == ["2"]
    assert all(model is models[0] for model in models)


def test_repository_device_overrides_yaml(make_model_dir, classifier_yaml, tiny_onnx):
    make_model_dir(classifier_yaml("onnxruntime", device="cuda"), files={"model.onnx": tiny_onnx})
    assert ModelRepository(make_model_dir.repo, device="cpu").load("tiny").device == "cpu"


def test_create_model_passes_arguments(make_model_dir, classifier_yaml, tiny_onnx):
    from streaminfer.models.config import load_model_config

    config = load_model_config(
        make_model_dir(
            classifier_yaml("onnxruntime"), versions=("1", "3"), files={"model.onnx": tiny_onnx}
        )
    )
    model = create_model(config, "1", "cpu", intra_op_num_threads=2)
    assert (model.version, model.device, model.intra_op_num_threads) == ("1", "cpu", 2)
    assert not model.is_loaded


def test_a_task_added_by_yaml_alone_serves(make_model_dir, tiny_onnx):
    """SPEC section 2: users add a task by dropping a model directory in; no code."""
    model_dir = make_model_dir.repo / "my-scorer"
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(tiny_onnx, model_dir / "1" / "model.onnx")
    (model_dir / "model.yaml").write_text(
        yaml.safe_dump(
            {
                "backend": "onnxruntime",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
                "outputs": [{"name": "scores", "datatype": "FP32", "shape": [2]}],
            }
        ),
        encoding="utf-8",
    )
    from streaminfer.models.friendly import friendly_to_tensors, tensors_to_friendly

    model = ModelRepository(make_model_dir.repo).load("my-scorer")
    tensors = friendly_to_tensors(model.config, {"x": [1, 0, 0, 0]})
    assert tensors_to_friendly(model.config, model.predict_batch(tensors)) == {
        "scores": [1.5, -0.5]
    }
