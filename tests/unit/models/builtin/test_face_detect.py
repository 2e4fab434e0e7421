"""Tests for the built-in face-detect task: built into a temporary repository (seconds), served
through the python backend as a worker would, on real photographs that scikit-image's wheel
ships (the astronaut: one face; coffee: none), and with hostile images."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from streaminfer.models.builtin import build_task, template_path
from streaminfer.models.builtin.face_detect import ASTRONAUT_FACE, CASCADE_FILE, confidence
from streaminfer.models.config import load_model_config
from streaminfer.models.errors import InvalidInput, ModelConfigError
from streaminfer.models.friendly import friendly_to_tensors, tensors_to_friendly
from streaminfer.models.repository import ModelRepository

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    metrics = build_task(repo, "face-detect")
    return repo, metrics


@pytest.fixture(scope="module")
def model(built):
    return ModelRepository(built[0], device="cpu").load("face-detect")


def _encoded(image: np.ndarray, fmt: str = "PNG", **options) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return base64.b64encode(buffer.getvalue()).decode()


def _friendly(model, inputs) -> dict:
    return tensors_to_friendly(
        model.config, model.predict_batch(friendly_to_tensors(model.config, inputs))
    )


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    small = Image.fromarray(image)
    small.thumbnail((size, size))
    return np.asarray(small)


def _holds(box: dict, point: tuple[float, float]) -> bool:
    return (
        box["x"] <= point[0] <= box["x"] + box["width"]
        and box["y"] <= point[1] <= box["y"] + box["height"]
    )


def _assert_one_face_at(faces: list, shape: tuple, point: tuple[float, float]) -> None:
    assert len(faces) == 1, faces
    face = faces[0]
    assert set(face) == {"box", "confidence"} and set(face["box"]) == {"x", "y", "width", "height"}
    box, (height, width) = face["box"], shape[:2]
    assert 0 <= box["x"] and box["x"] + box["width"] <= width
    assert 0 <= box["y"] and box["y"] + box["height"] <= height
    assert _holds(box, point), (box, point)
    assert 0.12 * width < box["width"] < 0.3 * width, "a face, not the whole suit or an eye"
    assert 0.0 < face["confidence"] <= 1.0


# --- the build ------------------------------------------------------------------------------------


def test_build_writes_model_py_and_the_cascade_and_checks_the_photos(built):
    repo, metrics = built
    version_dir = repo / "face-detect" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        CASCADE_FILE,
        "metrics.json",
        "model.py",
    ]
    assert metrics["photos_checked"] is True
    assert metrics["faces_found"] == {
        "astronaut": 1,
        "coffee": 0,
        "chelsea": 0,
        "camera": 0,
        "rocket": 0,
        "astronaut_256px": 1,
    }
    assert _holds(metrics["astronaut_box"], ASTRONAUT_FACE)
    assert json.loads((version_dir / "metrics.json").read_text())["faces_found"]["astronaut"] == 1


def test_template_contract(tmp_path):
    model_dir = tmp_path / "face-detect"
    model_dir.mkdir()
    (model_dir / "model.yaml").write_bytes(template_path("face-detect").read_bytes())
    config = load_model_config(model_dir)
    assert config.backend == "python" and config.artifact == "model.py"
    assert [(s.name, s.datatype, s.shape) for s in config.inputs] == [
        ("image", "UINT8", (-1, -1, 3))
    ]
    assert [(s.name, s.datatype, s.shape) for s in config.outputs] == [("faces_json", "BYTES", ())]
    signature = config.signature()
    assert signature["friendly_inputs"] == {"image": "image"}
    assert signature["friendly_outputs"] == {}
    assert signature["friendly_json_outputs"] == {"faces": "faces_json"}


# --- real photographs -----------------------------------------------------------------------------


def test_astronaut_png_has_one_face_where_her_face_is(model):
    astronaut = skimage_data.astronaut()
    faces = _friendly(model, {"image": _encoded(astronaut)})["faces"]
    _assert_one_face_at(faces, astronaut.shape, ASTRONAUT_FACE)
    assert faces[0]["confidence"] > 0.99


def test_astronaut_thumbnailed_to_256_px_boxes_in_its_own_pixels(model):
    small = _thumbnail(skimage_data.astronaut(), 256)
    assert small.shape == (256, 256, 3)
    faces = _friendly(model, {"image": _encoded(small)})["faces"]
    _assert_one_face_at(faces, small.shape, (ASTRONAUT_FACE[0] / 2, ASTRONAUT_FACE[1] / 2))


def test_astronaut_jpeg(model):
    astronaut = skimage_data.astronaut()
    faces = _friendly(model, {"image": _encoded(astronaut, "JPEG", quality=85)})["faces"]
    _assert_one_face_at(faces, astronaut.shape, ASTRONAUT_FACE)


def test_coffee_has_no_face(model):
    assert _friendly(model, {"image": _encoded(skimage_data.coffee())}) == {"faces": []}


def test_a_uint8_tensor_batch(model):
    astronaut = skimage_data.astronaut()
    mirrored = astronaut[:, ::-1]
    blank = np.full_like(astronaut, 128)
    outputs = model.predict_batch({"image": np.stack([astronaut, mirrored, blank])})
    assert outputs["faces_json"].shape == (3,)
    faces = [json.loads(document) for document in outputs["faces_json"]]
    _assert_one_face_at(faces[0], astronaut.shape, ASTRONAUT_FACE)
    _assert_one_face_at(faces[1], astronaut.shape, (511 - ASTRONAUT_FACE[0], ASTRONAUT_FACE[1]))
    assert faces[2] == []
    assert tensors_to_friendly(model.config, outputs)["faces"][2] == []


def test_a_list_of_images_of_one_size_is_one_batch(model):
    astronaut = skimage_data.astronaut()
    faces = _friendly(model, {"image": [_encoded(astronaut), _encoded(np.zeros_like(astronaut))]})[
        "faces"
    ]
    assert len(faces) == 2 and len(faces[0]) == 1 and faces[1] == []


def test_images_of_one_request_must_share_a_size(model):
    sizes = [_encoded(skimage_data.astronaut()), _encoded(skimage_data.coffee())]
    with pytest.raises(InvalidInput, match=r"images of sizes \[\(512, 512\), \(600, 400\)\]"):
        friendly_to_tensors(model.config, {"image": sizes})


def test_gray_and_transparent_images_are_made_rgb(model):
    astronaut = skimage_data.astronaut()
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, dtype=np.uint8)])
    for image in (gray, rgba):
        tensors = friendly_to_tensors(model.config, {"image": _encoded(image)})
        assert tensors["image"].shape == (1, 512, 512, 3) and tensors["image"].dtype == np.uint8
        assert len(tensors_to_friendly(model.config, model.predict_batch(tensors))["faces"]) == 1


def test_threads_share_the_model(model):
    astronaut = skimage_data.astronaut()
    batch = {"image": astronaut[np.newaxis]}
    with ThreadPoolExecutor(4) as pool:
        documents = list(pool.map(lambda _: model.predict_batch(batch)["faces_json"][0], range(8)))
    assert len(set(documents)) == 1 and len(json.loads(documents[0])) == 1


def test_confidence_is_monotone_in_0_1():
    scores = [confidence(w) for w in (-30.0, -1.7, 0.0, 3.4, 7.4, 30.0)]
    assert all(0.0 < s <= 1.0 for s in scores) and scores == sorted(scores)
    assert confidence(0.0) == 0.5


# --- hostile inputs -------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> str:
    """A PNG whose header declares ``width x height`` and whose data is missing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return base64.b64encode(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    ).decode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            base64.b64encode(b"just some text, no image").decode(),
            "not a readable image, PNG or JPEG",
        ),
        ("not base64 at all!", "not valid base64"),
        (_png_header_only(5000, 5000), r"image of 5000x5000 is too large; at most 307200"),
        (_png_header_only(100_000, 100_000), "could be decompression bomb"),  # Pillow's own guard
        (_png_header_only(641, 480), r"image of 641x480 is too large"),
        (
            _png_header_only(64, 64),
            "not a readable image",
        ),  # the header passes, the data is missing
        (12345, "expected a base64 image"),
        ([], "the list is empty"),
    ],
)
def test_hostile_images_are_invalid_input(model, value, message):
    with pytest.raises(InvalidInput, match=message):
        friendly_to_tensors(model.config, {"image": value})


def test_a_gif_is_refused(model):
    with pytest.raises(InvalidInput, match="PNG or JPEG"):
        friendly_to_tensors(
            model.config, {"image": _encoded(np.zeros((32, 32, 3), np.uint8), "GIF")}
        )


def test_tiny_and_empty_images_have_no_face(model):
    one_pixel = _encoded(np.array([[[200, 10, 10]]], dtype=np.uint8))
    assert _friendly(model, {"image": one_pixel}) == {"faces": []}
    empty = model.predict_batch({"image": np.zeros((2, 0, 0, 3), dtype=np.uint8)})
    assert [json.loads(d) for d in empty["faces_json"]] == [[], []]


def test_wrong_tensors_are_invalid_input(model):
    with pytest.raises(InvalidInput, match="expected datatype UINT8"):
        model.predict_batch({"image": np.zeros((1, 32, 32, 3), dtype=np.float32)})
    with pytest.raises(InvalidInput, match="expected shape"):
        model.predict_batch({"image": np.zeros((1, 32, 32), dtype=np.uint8)})
    with pytest.raises(InvalidInput, match="batch of 9 items"):
        model.predict_batch({"image": np.zeros((9, 32, 32, 3), dtype=np.uint8)})


# --- the friendly sections it relies on -----------------------------------------------------------


def test_friendly_sections_refuse_what_they_cannot_map():
    from streaminfer.models.config_sections import parse_friendly
    from streaminfer.models.signature import TensorSpec

    rgb_float = (TensorSpec("image", "FP32", (-1, -1, 3)),)
    rgb = (TensorSpec("image", "UINT8", (-1, -1, 3)),)
    text_out = (TensorSpec("faces_json", "BYTES", ()),)
    number_out = (TensorSpec("count", "INT64", ()),)
    image = {"inputs": {"image": {"kind": "image", "tensor": "image"}}}
    with pytest.raises(ModelConfigError, match=r"\[-1, -1, 3\] needs UINT8"):
        parse_friendly(image, rgb_float, text_out)
    with pytest.raises(ModelConfigError, match=r"max_pixels must be an int in 1\.\.4194304"):
        parse_friendly({"inputs": {"image": {"kind": "image", "max_pixels": 10**9}}}, rgb, text_out)
    with pytest.raises(ModelConfigError, match="kind json needs a BYTES tensor"):
        parse_friendly(
            {**image, "outputs": {"n": {"tensor": "count", "kind": "json"}}}, rgb, number_out
        )
    with pytest.raises(ModelConfigError, match="friendly.outputs.n"):
        parse_friendly(
            {**image, "outputs": {"n": {"tensor": "faces_json", "kind": "yaml"}}}, rgb, text_out
        )
    parsed = parse_friendly(
        {**image, "outputs": {"faces": {"tensor": "faces_json", "kind": "json"}}}, rgb, text_out
    )
    assert parsed["outputs"] == {} and parsed["json_outputs"] == {"faces": "faces_json"}
    assert "json_outputs" not in parse_friendly(image, rgb, text_out), "absent unless declared"
    assert parsed["inputs"]["image"]["native"] is True


def test_an_output_that_is_not_json_is_a_config_error(model):
    bad = np.empty(1, dtype=object)
    bad[:] = ["{not json"]
    with pytest.raises(ModelConfigError, match="not a JSON document"):
        tensors_to_friendly(model.config, {"faces_json": bad})


def test_building_without_opencv_names_the_install_command(monkeypatch):
    import importlib.util

    from streaminfer.models.builtin import check_build_dependencies
    from streaminfer.models.errors import MissingDependency

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a)
    )
    with pytest.raises(
        MissingDependency,
        match=r"'cv2'; install it with: pip install 'opencv-python-headless>=4.8,<5'",
    ):
        check_build_dependencies(["face-detect"])
