"""Tests for models.config: parsing model.yaml, versions, repository scans, signatures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from streaminfer.models.config import (
    ModelConfig,
    load_model_config,
    load_repository_configs,
)
from streaminfer.models.errors import ModelConfigError, ModelVersionNotFound
from streaminfer.models.signature import NUMPY_DTYPES, TensorSpec


def test_loads_every_field(make_model_dir, classifier_yaml):
    model_dir = make_model_dir(
        classifier_yaml("onnxruntime", name="tiny-model", description="  a tiny model  "),
        versions=("1",),
    )
    config = load_model_config(model_dir)
    assert isinstance(config, ModelConfig)
    assert (config.name, config.task, config.backend) == ("tiny-model", "tiny", "onnxruntime")
    assert config.inputs == (TensorSpec("x", "FP32", (4,)),)
    assert config.outputs[0] == TensorSpec("label", "INT64", ())
    assert (config.max_batch_size, config.max_batch_delay_ms, config.instances) == (4, 2.0, 1)
    assert (config.device, config.warmup, config.description) == ("auto", True, "a tiny model")
    assert config.path == model_dir.resolve()
    assert config.artifact == "model.onnx"
    assert config.preprocess == {"kind": "none"}
    assert hash(config) == hash(load_model_config(model_dir))  # usable as a dict key
    assert config.default_deadline_ms is None and config.signature()["default_deadline_ms"] is None


def test_a_default_deadline_is_read(make_model_dir, classifier_yaml):
    config = load_model_config(
        make_model_dir(classifier_yaml("onnxruntime", default_deadline_ms=250))
    )
    assert config.default_deadline_ms == 250 and config.signature()["default_deadline_ms"] == 250


def test_defaults_name_and_task_from_directory(make_model_dir, classifier_yaml):
    raw = classifier_yaml("torch")
    del raw["task"]
    config = load_model_config(make_model_dir(raw, dirname="my-task"))
    assert (config.name, config.task, config.artifact) == ("my-task", "my-task", "model.pt")


def test_versions_sorted_numerically_and_newest_is_default(make_model_dir, classifier_yaml):
    model_dir = make_model_dir(classifier_yaml("onnxruntime"), versions=("2", "10", "1"))
    (model_dir / ".3.building-abc").mkdir()  # a builder's staging dir is never a version
    (model_dir / "notes").mkdir()
    config = load_model_config(model_dir)
    assert config.versions == ("1", "2", "10")
    assert config.default_version == "10"
    assert config.version_path() == model_dir.resolve() / "10"
    assert config.version_path("2") == model_dir.resolve() / "2"
    assert config.artifact_path("1") == model_dir.resolve() / "1" / "model.onnx"


def test_version_policy_pins_a_version(make_model_dir, classifier_yaml):
    config = load_model_config(
        make_model_dir(classifier_yaml("onnxruntime", version_policy=2), versions=("1", "2", "3"))
    )
    assert config.default_version == "2"


def test_pinned_version_missing_gives_no_default(make_model_dir, classifier_yaml):
    config = load_model_config(
        make_model_dir(classifier_yaml("onnxruntime", version_policy="7"), versions=("1",))
    )
    assert config.default_version is None
    with pytest.raises(ModelVersionNotFound, match="pins '7'"):
        config.version_path()


def test_unknown_version_and_unbuilt_model(make_model_dir, classifier_yaml):
    config = load_model_config(make_model_dir(classifier_yaml("onnxruntime"), versions=("1",)))
    with pytest.raises(ModelVersionNotFound, match=r"no version '9'.*\['1'\]") as info:
        config.version_path("9")
    assert info.value.code == "MODEL_VERSION_NOT_FOUND"
    unbuilt = load_model_config(make_model_dir(classifier_yaml("torch", task="empty"), versions=()))
    assert unbuilt.versions == () and unbuilt.default_version is None
    with pytest.raises(ModelVersionNotFound, match="no version directory"):
        unbuilt.version_path()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "Bad_Name"}, "must match"),
        ({"task": "9starts-with-digit"}, "must match"),
        ({"task": "a" * 64}, "must match"),
        ({"backend": "tensorflow"}, "backend must be one of"),
        ({"backend": None}, "backend is required"),
        ({"device": "tpu"}, "device must be one of"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_batch_size": 2.5}, "max_batch_size must be a int"),
        ({"max_batch_size": True}, "max_batch_size must be a int"),
        ({"max_batch_delay_ms": -1}, "max_batch_delay_ms must be >= 0"),
        ({"warmup": "yes"}, "warmup must be true or false"),
        ({"default_deadline_ms": 0}, "default_deadline_ms must be >= 1"),
        ({"default_deadline_ms": -5}, "default_deadline_ms must be >= 1"),
        ({"default_deadline_ms": 2.5}, "default_deadline_ms must be a int"),
        ({"default_deadline_ms": True}, "default_deadline_ms must be a int"),
        ({"default_deadline_ms": "100"}, "default_deadline_ms must be a int"),
        ({"default_deadline_ms": 400 * 24 * 3600 * 1000}, "default_deadline_ms must be <="),
        ({"colour": "blue"}, r"unknown keys \['colour'\]"),
        ({"task": "tiny\n"}, "task name"),  # "$" would let the trailing newline through
        ({"inputs": []}, "inputs must be a non-empty list"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [4]}]}, "datatype must be"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0]}]}, "shape must be"),
        ({"inputs": [{"datatype": "FP32", "shape": [4]}]}, "needs a string 'name'"),
        (
            {"outputs": [{"name": "y", "datatype": "FP32"}, {"name": "y", "datatype": "FP32"}]},
            "duplicate tensor names",
        ),
        ({"version_policy": "newest"}, "version_policy must be"),
        ({"artifact": "../escape.onnx"}, "artifact must be a file name"),
        ({"preprocess": {"kind": "resize"}}, "preprocess.kind must be one of"),
        ({"preprocess": {"kind": "tokenize", "input": "x"}}, "must name a BYTES input"),
        ({"friendly": {"inputs": {"x": {"kind": "sound"}}}}, "kind must be one of"),
        ({"friendly": {"inputs": {"x": {"kind": "array", "tensor": "nope"}}}}, "not an input"),
        ({"friendly": {"inputs": {"x": {"kind": "text", "tensor": "x"}}}}, "needs a BYTES tensor"),
        ({"friendly": {"inputs": {"x": {"kind": "image", "tensor": "x"}}}}, "fixed shape"),
        (
            {"friendly": {"inputs": {"x": {"kind": "named_features", "names": ["a", "b"]}}}},
            "2 names but tensor x has shape",
        ),
        (
            {"friendly": {"inputs": {"x": {"kind": "named_features", "names": ["a", "a"]}}}},
            "distinct strings",
        ),
        ({"friendly": {"outputs": {"y": "missing"}}}, "friendly.outputs must map"),
        ({"friendly": {"bare_key": "nope"}}, "bare_key"),
    ],
)
def test_rejects_bad_config_with_a_clear_message(make_model_dir, change, message, classifier_yaml):
    raw = classifier_yaml("onnxruntime")
    raw.update(change)
    model_dir = make_model_dir(raw)
    with pytest.raises(ModelConfigError, match=message) as info:
        load_model_config(model_dir)
    assert "model.yaml" in str(info.value)  # the message names the file
    assert info.value.code == "MODEL_CONFIG_ERROR" and not info.value.retriable


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ModelConfigError, match="not found"):
        load_model_config(tmp_path)
    (tmp_path / "model.yaml").write_text("task: [unclosed", encoding="utf-8")
    with pytest.raises(ModelConfigError, match="cannot read YAML"):
        load_model_config(tmp_path)
    (tmp_path / "model.yaml").write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ModelConfigError, match="mapping at the top level"):
        load_model_config(tmp_path)


def test_friendly_defaults_to_one_key_per_tensor(make_model_dir, classifier_yaml, text_yaml):
    config = load_model_config(make_model_dir(classifier_yaml("onnxruntime")))
    assert config.friendly == {
        "inputs": {"x": {"kind": "array", "tensor": "x"}},
        "outputs": {"label": "label", "scores": "scores"},
        "bare_key": "x",
    }
    text = load_model_config(make_model_dir(text_yaml()))
    assert text.friendly["inputs"] == {"text": {"kind": "text", "tensor": "text"}}
    assert text.preprocess == {
        "kind": "tokenize",
        "input": "text",
        "tokenizer": "tokenizer.json",
        "max_length": 4,
    }


def test_image_source_gets_defaults(make_model_dir, classifier_yaml):
    raw = classifier_yaml(
        "torch",
        inputs=[{"name": "pixels", "datatype": "FP32", "shape": [8, 8]}],
        friendly={"inputs": {"image": {"kind": "image", "tensor": "pixels"}}},
    )
    source = load_model_config(make_model_dir(raw)).friendly["inputs"]["image"]
    assert source == {"kind": "image", "tensor": "pixels", "invert": "auto", "max_value": 255.0}


def test_signature_is_json_able_and_complete(make_model_dir, classifier_yaml):
    config = load_model_config(make_model_dir(classifier_yaml("onnxruntime"), versions=("1", "2")))
    signature = json.loads(json.dumps(config.signature()))
    assert signature["task"] == "tiny"
    assert signature["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [4]}]
    assert signature["outputs"][1] == {"name": "scores", "datatype": "FP32", "shape": [2]}
    assert signature["batching"] == {"max_batch_size": 4, "max_batch_delay_ms": 2.0}
    assert signature["versions"] == ["1", "2"] and signature["default_version"] == "2"
    assert signature["friendly_inputs"] == {"x": "array"}


def test_repository_configs_keyed_by_task(make_model_dir, classifier_yaml):
    make_model_dir(classifier_yaml("onnxruntime", task="alpha"), dirname="model-a")
    make_model_dir(classifier_yaml("torch", task="beta"), dirname="model-b")
    (make_model_dir.repo / "not-a-model").mkdir()
    (make_model_dir.repo / "README.txt").write_text("hi", encoding="utf-8")
    configs = load_repository_configs(make_model_dir.repo)
    assert sorted(configs) == ["alpha", "beta"]
    assert configs["beta"].backend == "torch"
    assert configs["alpha"].path.name == "model-a"


def test_repository_refuses_a_task_declared_twice(make_model_dir, classifier_yaml):
    make_model_dir(classifier_yaml("onnxruntime", task="same"), dirname="one")
    make_model_dir(classifier_yaml("onnxruntime", task="same"), dirname="two")
    with pytest.raises(ModelConfigError, match="declared by both"):
        load_repository_configs(make_model_dir.repo)


def test_repository_path_must_exist(tmp_path):
    with pytest.raises(ModelConfigError, match="not a directory"):
        load_repository_configs(tmp_path / "nowhere")


def test_numpy_dtypes_cover_every_datatype():
    assert set(NUMPY_DTYPES) == {
        "BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
    }  # fmt: skip
    assert NUMPY_DTYPES["FP32"] == np.float32 and NUMPY_DTYPES["BYTES"] == np.object_


def test_config_and_friendly_import_neither_torch_nor_onnxruntime():
    code = (
        "import sys, models.config, models.friendly, models.errors\n"
        "heavy = {'torch', 'onnxruntime', 'transformers', 'tokenizers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_yaml_round_trip_of_a_template_is_stable(make_model_dir, classifier_yaml):
    raw = classifier_yaml("onnxruntime")
    model_dir = make_model_dir(raw)
    assert yaml.safe_load((model_dir / "model.yaml").read_text()) == raw


def test_served_versions_are_the_default_and_the_newest_other():
    import dataclasses

    from helpers.worker_fakes import config

    base = config()
    assert dataclasses.replace(base, versions=("1",), default_version="1").served_versions == ("1",)
    three = dataclasses.replace(base, versions=("1", "2", "3"), default_version="3")
    assert three.served_versions == ("2", "3")
    pinned = dataclasses.replace(three, default_version="1", version_policy="1")
    assert pinned.served_versions == ("1", "3"), "a pin and the newest build"
    assert dataclasses.replace(three, default_version=None).served_versions == ()
