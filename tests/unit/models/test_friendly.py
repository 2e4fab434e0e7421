"""Tests for models.friendly: friendly JSON -> tensors, validation, tensors -> friendly JSON.

Configs come from the committed built-in templates, so these tests also pin the friendly forms
that SPEC section 5 promises HTTP clients.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from streaminfer.models.builtin import template_path
from streaminfer.models.config import load_model_config
from streaminfer.models.errors import InvalidInput
from streaminfer.models.friendly import friendly_to_tensors, tensors_to_friendly
from streaminfer.models.validation import validate_tensors


@pytest.fixture
def builtin_config(tmp_path):
    def load(task: str):
        model_dir = tmp_path / task
        model_dir.mkdir()
        shutil.copyfile(template_path(task), model_dir / "model.yaml")
        return load_model_config(model_dir)

    return load


@pytest.fixture
def text_config(builtin_config):
    return builtin_config("text-embedding")


@pytest.fixture
def image_config(builtin_config):
    return builtin_config("image-classify")


@pytest.fixture
def tabular_config(builtin_config):
    return builtin_config("tabular-classify")


def _png(pixels: np.ndarray, mode: str = "L") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _digit_like() -> np.ndarray:
    """An 8x8 'ink' pattern on the 0..16 scale with a blank border."""
    digit = np.zeros((8, 8))
    digit[1:7, 3] = 16.0
    digit[1, 2:5] = 8.0
    return digit


# --- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"text": "hello"}, ["hello"]),
        ({"text": ["a", "b", "c"]}, ["a", "b", "c"]),
        ("bare string", ["bare string"]),
        (["bare", "list"], ["bare", "list"]),
    ],
)
def test_text_forms_become_a_bytes_tensor(text_config, inputs, expected):
    tensors = friendly_to_tensors(text_config, inputs)
    assert list(tensors) == ["text"]
    assert tensors["text"].dtype == object and tensors["text"].shape == (len(expected),)
    assert tensors["text"].tolist() == expected


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"text": ""}, "item 0 is empty text"),
        ({"text": ["fine", "   "]}, "item 1 is empty text"),
        ({"text": []}, "the list is empty"),
        ({"text": 42}, "expected a string or a list of strings"),
        ({"text": ["ok", 3]}, "expected a string or a list of strings"),
        ({"txt": "typo"}, r"unknown input keys \['txt'\]"),
        ({}, "missing input"),
        ({"text": ["x"] * 33}, "batch of 33 items, must be between 1 and 32"),
    ],
)
def test_bad_text_is_invalid_input(text_config, inputs, message):
    with pytest.raises(InvalidInput, match=message) as info:
        friendly_to_tensors(text_config, inputs)
    assert info.value.code == "INVALID_INPUT" and not info.value.retriable


# --- arrays and images ---------------------------------------------------------------------------


def test_one_pixel_grid_gets_a_batch_dimension(image_config):
    grid = np.arange(64, dtype=float).reshape(8, 8) / 4
    tensors = friendly_to_tensors(image_config, {"pixels": grid.tolist()})
    assert tensors["pixels"].dtype == np.float32 and tensors["pixels"].shape == (1, 8, 8)
    np.testing.assert_allclose(tensors["pixels"][0], grid)


def test_several_pixel_grids(image_config):
    grids = np.random.default_rng(0).uniform(0, 16, size=(3, 8, 8))
    tensors = friendly_to_tensors(image_config, {"pixels": grids.tolist()})
    assert tensors["pixels"].shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((8, 9)).tolist(), r"expected shape \[N, 8, 8\]"),
        (np.zeros((2, 2, 8, 8)).tolist(), r"got \[2, 2, 8, 8\]"),
        ([[1, 2], [3]], "rectangular array of numbers"),
        ([["a"] * 8] * 8, "rectangular array of numbers"),
        ("not a list", "nested lists of numbers"),
        ([[float("nan")] * 8] * 8, "NaN or infinity"),
    ],
)
def test_bad_pixels_are_invalid_input(image_config, pixels, message):
    with pytest.raises(InvalidInput, match=message):
        friendly_to_tensors(image_config, {"pixels": pixels})


def test_dark_on_light_png_is_inverted_to_the_digits_scale(image_config):
    digit = _digit_like()
    # Upscale 8x: each source pixel becomes an 8x8 block, so BOX resizing recovers it exactly.
    light_background = 255 - np.kron(digit / 16 * 255, np.ones((8, 8)))
    tensors = friendly_to_tensors(image_config, {"image": _png(light_background)})
    assert tensors["pixels"].shape == (1, 8, 8) and tensors["pixels"].dtype == np.float32
    np.testing.assert_allclose(tensors["pixels"][0], digit, atol=0.1)


def test_light_on_dark_png_and_data_url_and_rgb(image_config):
    digit = _digit_like()
    dark_background = np.kron(digit / 16 * 255, np.ones((4, 4)))
    image = "data:image/png;base64," + _png(dark_background, mode="RGB")
    tensors = friendly_to_tensors(image_config, {"image": [image, image]})
    assert tensors["pixels"].shape == (2, 8, 8)
    np.testing.assert_allclose(tensors["pixels"][1], digit, atol=0.1)


def test_transparent_background_counts_as_light(image_config):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # fully transparent black...
    rgba[4:12, 6:10] = [0, 0, 0, 255]  # ...with an opaque black stroke, 2x2 blocks
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, "PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    pixels = friendly_to_tensors(image_config, {"image": encoded})["pixels"][0]
    assert pixels[0, 0] == pytest.approx(0.0)  # background
    assert pixels[4, 3] == pytest.approx(16.0) and pixels[4, 4] == pytest.approx(16.0)  # ink


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("%%% not base64 %%%", "not valid base64"),
        (base64.b64encode(b"definitely not a png").decode(), "not a readable image"),
        (123, "expected a base64 image"),
    ],
)
def test_bad_images_are_invalid_input(image_config, image, message):
    with pytest.raises(InvalidInput, match=message):
        friendly_to_tensors(image_config, {"image": image})


def test_pixels_and_image_together_are_ambiguous(image_config):
    with pytest.raises(InvalidInput, match="give only one of"):
        friendly_to_tensors(image_config, {"pixels": np.zeros((8, 8)).tolist(), "image": "x"})


# --- named features ------------------------------------------------------------------------------


def _features(config, offset: float = 0.0) -> dict[str, float]:
    names = config.friendly["inputs"]["features"]["names"]
    return {name: float(index) + offset for index, name in enumerate(names)}


def test_named_features_follow_the_yaml_order(tabular_config):
    features = _features(tabular_config)
    shuffled = dict(reversed(list(features.items())))  # key order in JSON must not matter
    tensors = friendly_to_tensors(tabular_config, {"features": shuffled})
    assert tensors["features"].dtype == np.float32 and tensors["features"].shape == (1, 30)
    np.testing.assert_array_equal(tensors["features"][0], np.arange(30, dtype=np.float32))
    assert tensors["features"][0, 0] == features["mean radius"]
    assert tensors["features"][0, 29] == features["worst fractal dimension"]


def test_a_list_of_feature_maps_is_a_batch(tabular_config):
    rows = [_features(tabular_config), _features(tabular_config, offset=100.0)]
    tensors = friendly_to_tensors(tabular_config, {"features": rows})
    assert tensors["features"].shape == (2, 30)
    assert tensors["features"][1, 0] == 100.0


def test_unknown_and_missing_feature_names_are_named(tabular_config):
    features = _features(tabular_config)
    del features["mean area"]
    features["mean vibes"] = 1.0
    with pytest.raises(InvalidInput) as info:
        friendly_to_tensors(tabular_config, {"features": features})
    assert "mean vibes" in str(info.value) and "mean area" in str(info.value)


@pytest.mark.parametrize("value", ["1.5", None, True, [1.0]])
def test_feature_values_must_be_numbers(tabular_config, value):
    features = _features(tabular_config)
    features["mean radius"] = value
    with pytest.raises(InvalidInput, match="'mean radius' must be a number"):
        friendly_to_tensors(tabular_config, {"features": features})


# --- validate_tensors ----------------------------------------------------------------------------


def test_validate_accepts_contract_tensors(image_config, text_config):
    validate_tensors(image_config, {"pixels": np.zeros((64, 8, 8), dtype=np.float32)})
    validate_tensors(text_config, {"text": np.array([b"bytes are fine", "str too"], dtype=object)})


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({}, r"missing \['pixels'\]"),
        (
            {"pixels": np.zeros((1, 8, 8), np.float32), "extra": np.zeros(1)},
            r"unexpected \['extra'\]",
        ),
        ({"pixels": np.zeros((1, 8, 8), np.float64)}, "expected datatype FP32"),
        ({"pixels": np.zeros((1, 8, 7), np.float32)}, r"expected shape \[N, 8, 8\].*\[1, 8, 7\]"),
        ({"pixels": np.zeros((8, 8), np.float32)}, r"expected shape \[N, 8, 8\]"),
        ({"pixels": np.zeros((0, 8, 8), np.float32)}, "batch of 0 items"),
        ({"pixels": np.zeros((65, 8, 8), np.float32)}, "batch of 65 items"),
        ({"pixels": np.full((2, 8, 8), np.inf, np.float32)}, "item 0 contains NaN or infinity"),
        ({"pixels": [[0.0] * 8] * 8}, "expected a numpy array"),
    ],
)
def test_validate_rejects_broken_tensors(image_config, tensors, message):
    with pytest.raises(InvalidInput, match=message):
        validate_tensors(image_config, tensors)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (np.array([b"\xff\xfe"], dtype=object), "not valid UTF-8"),
        (np.array(["ok", b""], dtype=object), "item 1 is empty text"),
        (np.array([3], dtype=object), "must be text"),
        (np.array([1.0, 2.0]), "expected BYTES"),
    ],
)
def test_validate_rejects_bad_text(text_config, texts, message):
    with pytest.raises(InvalidInput, match=message):
        validate_tensors(text_config, {"text": texts})


def test_validate_checks_batch_sizes_agree(make_model_dir, classifier_yaml):
    raw = classifier_yaml(
        "onnxruntime",
        inputs=[
            {"name": "a", "datatype": "FP32", "shape": [2]},
            {"name": "b", "datatype": "INT64", "shape": [-1]},
        ],
    )
    config = load_model_config(make_model_dir(raw))
    validate_tensors(config, {"a": np.zeros((2, 2), np.float32), "b": np.zeros((2, 5), np.int64)})
    with pytest.raises(InvalidInput, match="disagree on the batch size"):
        validate_tensors(
            config, {"a": np.zeros((2, 2), np.float32), "b": np.zeros((3, 1), np.int64)}
        )


# --- tensors_to_friendly -------------------------------------------------------------------------


def test_one_item_is_unwrapped(image_config):
    probabilities = np.full((1, 10), 0.1, dtype=np.float32)
    friendly = tensors_to_friendly(
        image_config, {"label": np.array([3], dtype=np.int64), "probabilities": probabilities}
    )
    assert friendly["label"] == 3 and type(friendly["label"]) is int
    assert len(friendly["probabilities"]) == 10
    assert all(type(p) is float for p in friendly["probabilities"])
    json.dumps(friendly)


def test_several_items_are_lists(tabular_config, text_config):
    friendly = tensors_to_friendly(
        tabular_config,
        {"label": np.array([0, 1], np.int64), "probability": np.array([0.1, 0.9], np.float32)},
    )
    assert friendly["label"] == [0, 1]
    assert friendly["probability"] == pytest.approx([0.1, 0.9])
    embeddings = tensors_to_friendly(text_config, {"embedding": np.ones((3, 384), np.float32)})
    assert len(embeddings["embedding"]) == 3 and len(embeddings["embedding"][0]) == 384
    json.dumps(embeddings)


def test_bytes_outputs_become_strings(make_model_dir, classifier_yaml):
    raw = classifier_yaml(
        "onnxruntime", outputs=[{"name": "caption", "datatype": "BYTES", "shape": []}]
    )
    config = load_model_config(make_model_dir(raw))
    friendly = tensors_to_friendly(config, {"caption": np.array([b"a cat", "a dog"], dtype=object)})
    assert friendly == {"caption": ["a cat", "a dog"]}


def test_a_user_task_works_from_yaml_alone(make_model_dir, classifier_yaml):
    """No friendly section: the tensor names are the friendly keys, a bare value fills the input."""
    config = load_model_config(make_model_dir(classifier_yaml("onnxruntime", task="user-task")))
    by_key = friendly_to_tensors(config, {"x": [1, 2, 3, 4]})
    bare = friendly_to_tensors(config, [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert by_key["x"].shape == (1, 4) and bare["x"].shape == (2, 4)
    assert bare["x"].dtype == np.float32


def test_integer_tensors_refuse_fractions(make_model_dir, classifier_yaml):
    raw = classifier_yaml(
        "onnxruntime", inputs=[{"name": "ids", "datatype": "INT64", "shape": [2]}]
    )
    config = load_model_config(make_model_dir(raw))
    assert friendly_to_tensors(config, {"ids": [1, 2]})["ids"].dtype == np.int64
    with pytest.raises(InvalidInput, match="whole numbers"):
        friendly_to_tensors(config, {"ids": [1.5, 2]})


def test_friendly_imports_no_heavy_runtime():
    code = (
        "import sys, models.friendly\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "assert 'PIL' not in sys.modules  # only loaded when an image arrives\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- images refused before decoding (review finding 1 of issue 11) -------------------------------


def _encoded(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images Pillow decodes (ImageFile.load), headers aside."""
    from PIL import ImageFile

    count = {"n": 0}
    load = ImageFile.ImageFile.load

    def counted(self):
        count["n"] += 1
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    return count


def test_a_huge_declared_image_is_refused_from_its_header(image_config, decodes):
    bomb = _encoded(Image.new("1", (4096, 4096)), "PNG")  # a few KB of base64
    assert len(bomb) < 10_000
    with pytest.raises(InvalidInput, match="4096x4096 is too large"):
        friendly_to_tensors(image_config, {"image": bomb})
    assert decodes["n"] == 0


def test_a_batch_over_the_limit_is_refused_before_decoding(image_config, decodes):
    small = _png(_digit_like())
    with pytest.raises(InvalidInput, match="batch of 65 items"):
        friendly_to_tensors(image_config, {"image": [small] * 65})
    assert decodes["n"] == 0


def test_one_bad_image_refuses_the_batch_before_any_is_decoded(image_config, decodes):
    good, bad = _png(_digit_like()), _encoded(Image.new("1", (4096, 4096)), "PNG")
    with pytest.raises(InvalidInput, match="item 3: image of 4096x4096"):
        friendly_to_tensors(image_config, {"image": [good, good, good, bad]})
    assert decodes["n"] == 0


def test_all_the_images_of_a_request_are_bounded_together(image_config, decodes):
    from streaminfer.models.friendly import MAX_IMAGE_PIXELS, MAX_REQUEST_IMAGE_PIXELS

    side = int(MAX_IMAGE_PIXELS**0.5)
    each = _encoded(Image.new("1", (side, side)), "PNG")
    count = MAX_REQUEST_IMAGE_PIXELS // MAX_IMAGE_PIXELS + 1
    with pytest.raises(InvalidInput, match="pixels in all"):
        friendly_to_tensors(image_config, {"image": [each] * count})
    assert decodes["n"] == 0


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_only_png_and_jpeg_are_accepted(image_config, fmt):
    image = Image.fromarray(np.full((8, 8), 200, dtype=np.uint8))
    with pytest.raises(InvalidInput, match="PNG or JPEG"):
        friendly_to_tensors(image_config, {"image": _encoded(image, fmt)})


def test_jpeg_is_accepted(image_config):
    image = Image.fromarray(np.full((16, 16), 255, dtype=np.uint8))
    assert friendly_to_tensors(image_config, {"image": _encoded(image, "JPEG")})[
        "pixels"
    ].shape == (1, 8, 8)
