"""Tests for models.builtin: templates, the build driver, and the real built-in models.

The real models are built into the default repository when missing (about a minute, cached
between runs); the driver itself is exercised on a temporary repository with the fast task.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streaminfer.models.builtin import (
    BUILTIN_TASKS,
    build_all,
    build_task,
    default_repository,
    is_built,
    template_path,
)
from streaminfer.models.builtin.__main__ import main
from streaminfer.models.builtin.datasets import (
    breast_cancer_feature_names,
    breast_cancer_split,
    digits_split,
)
from streaminfer.models.config import load_model_config
from streaminfer.models.errors import ModelNotFound
from streaminfer.models.friendly import friendly_to_tensors, tensors_to_friendly
from streaminfer.models.repository import ModelRepository

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def built_repository() -> ModelRepository:
    """The default repository with every built-in model (built once when missing)."""
    build_all(default_repository())
    return ModelRepository(default_repository(), device="cpu")


def _template(task: str, tmp_path: Path):
    model_dir = tmp_path / task
    model_dir.mkdir()
    shutil.copyfile(template_path(task), model_dir / "model.yaml")
    return load_model_config(model_dir)


# --- templates and layout -------------------------------------------------------------------------


def test_default_repository_is_at_the_project_root():
    assert default_repository() == PROJECT_ROOT / "model_repository"


@pytest.mark.parametrize("task", list(BUILTIN_TASKS))
def test_templates_parse_and_name_their_task(tmp_path, task):
    config = _template(task, tmp_path)
    assert config.task == task
    assert config.device == "auto" and config.warmup is True


def test_templates_match_the_contract(tmp_path):
    """SPEC section 8: tensor names, datatypes and per-item shapes of the built-ins."""
    signatures = {
        task: (
            [(s.name, s.datatype, s.shape) for s in config.inputs],
            [(s.name, s.datatype, s.shape) for s in config.outputs],
            config.backend,
        )
        for task in BUILTIN_TASKS
        for config in [_template(task, tmp_path)]
    }
    assert signatures == {
        "text-embedding": (
            [("text", "BYTES", ())],
            [("embedding", "FP32", (384,))],
            "onnxruntime",
        ),
        "image-classify": (
            [("pixels", "FP32", (8, 8))],
            [("label", "INT64", ()), ("probabilities", "FP32", (10,))],
            "torch",
        ),
        "tabular-classify": (
            [("features", "FP32", (30,))],
            [("label", "INT64", ()), ("probability", "FP32", ())],
            "onnxruntime",
        ),
        "face-detect": (
            [("image", "UINT8", (-1, -1, 3))],
            [("faces_json", "BYTES", ())],
            "python",
        ),
    }


def test_tabular_template_lists_sklearn_feature_names_in_order(tmp_path):
    config = _template("tabular-classify", tmp_path)
    assert config.friendly["inputs"]["features"]["names"] == breast_cancer_feature_names()


def test_batch_sizes(tmp_path):
    sizes = {task: _template(task, tmp_path).max_batch_size for task in BUILTIN_TASKS}
    assert sizes == {
        "text-embedding": 32,
        "image-classify": 64,
        "tabular-classify": 64,
        "face-detect": 8,
    }


def test_importing_the_package_stays_light():
    code = (
        "import sys\n"
        "from streaminfer.models.builtin import default_repository\n"
        "default_repository()\n"
        "assert not {'torch', 'sklearn', 'transformers'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_task_is_refused_before_building(tmp_path):
    with pytest.raises(ModelNotFound, match="no built-in task 'nope'"):
        build_all(tmp_path, tasks=["tabular-classify", "nope"])
    assert not (tmp_path / "tabular-classify").exists()


def test_stratified_splits_are_deterministic():
    first, second = digits_split(), digits_split()
    np.testing.assert_array_equal(first.y_test, second.y_test)
    assert first.x_test.shape == (450, 8, 8)
    cancer = breast_cancer_split()
    # Stratified: both classes keep their share (~63% benign) in the test set.
    assert abs(cancer.y_test.mean() - cancer.y_train.mean()) < 0.01


# --- the build driver, on the fast task -----------------------------------------------------------


def test_build_skip_and_force(tmp_path):
    first = build_task(tmp_path, "tabular-classify")
    assert not first["skipped"] and first["accuracy"] >= 0.93
    model_dir = tmp_path / "tabular-classify"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "model.yaml"]  # no staging left
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [
        "features.sqlite",
        "metrics.json",
        "model.onnx",
    ]
    assert is_built(tmp_path, "tabular-classify")

    artifact = model_dir / "1" / "model.onnx"
    mtime = artifact.stat().st_mtime_ns
    again = build_task(tmp_path, "tabular-classify")
    assert again["skipped"] and again["accuracy"] == first["accuracy"]
    assert artifact.stat().st_mtime_ns == mtime

    forced = build_task(tmp_path, "tabular-classify", force=True)
    assert not forced["skipped"] and artifact.stat().st_mtime_ns != mtime


def test_a_task_built_by_another_recipe_is_rebuilt(tmp_path, monkeypatch):
    """A checkout that pulls a changed builder or template gets that task rebuilt by `make models`."""
    build_task(tmp_path, "tabular-classify")
    assert build_task(tmp_path, "tabular-classify")["skipped"]
    import streaminfer.models.builtin as builtin

    monkeypatch.setattr(builtin, "recipe_digest", lambda task: "another recipe")
    assert not is_built(tmp_path, "tabular-classify")
    assert not build_task(tmp_path, "tabular-classify")["skipped"]
    assert build_task(tmp_path, "tabular-classify")["skipped"], "built by the new recipe now"


def test_cli_builds_and_prints_accuracy(tmp_path, capsys):
    assert main(["--repo", str(tmp_path), "--tasks", "tabular-classify"]) == 0
    out = capsys.readouterr().out
    assert "tabular-classify" in out and "held-out accuracy 0.9" in out
    assert main(["--repo", str(tmp_path), "--tasks", "nope"]) == 1


# --- the real built-in models ---------------------------------------------------------------------


def test_metrics_meet_the_thresholds(built_repository):
    metrics = {
        task: json.loads((default_repository() / task / "1" / "metrics.json").read_text())
        for task in BUILTIN_TASKS
    }
    assert metrics["image-classify"]["accuracy"] >= 0.95
    assert metrics["tabular-classify"]["accuracy"] >= 0.93
    assert metrics["text-embedding"]["min_cosine_vs_transformers"] > 0.999
    assert metrics["face-detect"]["faces_found"]["astronaut"] == 1


def _accuracy(model, x: np.ndarray, y: np.ndarray, input_name: str) -> float:
    size = model.config.max_batch_size
    labels = [
        model.predict_batch({input_name: x[start : start + size]})["label"]
        for start in range(0, len(x), size)
    ]
    return float((np.concatenate(labels) == y).mean())


def test_digits_accuracy_through_the_repository(built_repository):
    model = built_repository.load("image-classify")
    split = digits_split()
    assert _accuracy(model, split.x_test, split.y_test, "pixels") >= 0.95
    probabilities = model.predict_batch({"pixels": split.x_test[:5]})["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_png_of_a_digit_is_classified_through_the_friendly_path(built_repository):
    """The gateway's path: base64 PNG, dark ink on white, far larger than 8x8."""
    import base64
    import io

    from PIL import Image

    model = built_repository.load("image-classify")
    split = digits_split()
    correct = 0
    for image, label in zip(split.x_test[:20], split.y_test[:20], strict=True):
        ink = np.kron(image / 16.0, np.ones((16, 16)))  # 128x128, each pixel a 16x16 block
        buffer = io.BytesIO()
        Image.fromarray(((1.0 - ink) * 255).round().astype(np.uint8)).save(buffer, "PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        tensors = friendly_to_tensors(model.config, {"image": encoded})
        friendly = tensors_to_friendly(model.config, model.predict_batch(tensors))
        correct += friendly["label"] == label
    assert correct >= 19


def test_breast_cancer_accuracy_through_the_repository(built_repository):
    model = built_repository.load("tabular-classify")
    split = breast_cancer_split()
    assert _accuracy(model, split.x_test, split.y_test, "features") >= 0.93
    probability = model.predict_batch({"features": split.x_test[:8]})["probability"]
    assert probability.shape == (8,) and ((probability >= 0) & (probability <= 1)).all()


def test_tabular_friendly_round_trip(built_repository):
    model = built_repository.load("tabular-classify")
    split = breast_cancer_split()
    names = breast_cancer_feature_names()
    row = {name: float(value) for name, value in zip(names, split.x_test[0], strict=True)}
    friendly = tensors_to_friendly(
        model.config, model.predict_batch(friendly_to_tensors(model.config, {"features": row}))
    )
    assert friendly["label"] in (0, 1) and 0.0 <= friendly["probability"] <= 1.0
    assert friendly["label"] == int(friendly["probability"] >= 0.5)


def _embed(model, texts: list[str]) -> np.ndarray:
    return model.predict_batch({"text": np.array(texts, dtype=object)})["embedding"]


def test_embeddings_are_unit_vectors(built_repository):
    model = built_repository.load("text-embedding")
    embeddings = _embed(model, ["short", "a somewhat longer sentence about stream processing"])
    assert embeddings.shape == (2, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences(built_repository):
    model = built_repository.load("text-embedding")
    cat, kitten, finance = _embed(
        model,
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "The central bank raised interest rates again.",
        ],
    )
    assert cat @ kitten > 0.6
    assert cat @ kitten > cat @ finance + 0.3


def test_padding_does_not_change_an_embedding(built_repository):
    model = built_repository.load("text-embedding")
    alone = _embed(model, ["kafka"])[0]
    padded = _embed(model, ["kafka", "a much longer text that forces padding " * 5])[0]
    assert alone @ padded > 0.9999


def test_long_text_is_truncated_not_refused(built_repository):
    model = built_repository.load("text-embedding")
    assert _embed(model, ["word " * 2000]).shape == (1, 384)
