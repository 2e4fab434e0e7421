"""Build ``face-detect``: OpenCV's bundled frontal-face Haar cascade behind the python backend.

This file is also the served model: ``build`` copies it verbatim into the version directory as
``model.py``, beside ``haarcascade_frontalface_default.xml`` from ``cv2.data.haarcascades``
(nothing is downloaded). So the module imports only numpy at the top, cv2 when the model loads,
and streaminfer only inside ``build``.

Contract: ``image`` UINT8 ``[N, H, W, 3]`` (RGB, each image at the size it was sent) ->
``faces_json`` BYTES ``[N]``, one JSON document per image: ``[{"box": {"x", "y", "width",
"height"}, "confidence"}]``, best first, boxes in pixels of that image. A JSON document per
image because the number of faces varies: a tensor ``[N, F, 5]`` would need padding and a count
beside it; the friendly output ``faces`` (``kind: json``) gives the documents parsed.

Confidence: ``detectMultiScale3(..., outputRejectLevels=True)`` reports, per detection, the
score of the cascade's last stage (``levelWeights``; OpenCV keeps the best of the windows it
groups into one box). We map it with the logistic function, ``1 / (1 + exp(-w))``, into (0, 1):
monotone in the cascade's own evidence, not a calibrated probability. Seen with OpenCV 4.14:
the astronaut's face scores w = 7.4 (0.9994); windows that pass every stage but lack neighbours
(false detections, dropped by ``min_neighbors``) score -1.7..3.4 on scikit-image's photos.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["ARTIFACT", "CASCADE_FILE", "TASK", "HaarFaceDetector", "build", "confidence"]

TASK = "face-detect"
# What building (and serving) needs: module -> the command that installs it
REQUIRES = {
    "cv2": "pip install 'opencv-python-headless>=4.8,<5'",
}
ARTIFACT = "model.py"
CASCADE_FILE = "haarcascade_frontalface_default.xml"
CASCADE_WINDOW = 24
"""The cascade's detection window: an image smaller than this holds no face it can see."""


def confidence(level_weight: float) -> float:
    """The cascade's last-stage score mapped into (0, 1) by the logistic function."""
    return 1.0 / (1.0 + math.exp(-float(level_weight)))


class HaarFaceDetector:
    """Frontal faces in RGB images; ``model.yaml``'s ``python.parameters`` are the keyword
    arguments of ``detectMultiScale3``.

    ``cv2.CascadeClassifier`` is not documented as safe to share between threads, so each
    thread of the worker's pool gets its own (loading one takes ~20 ms); OpenCV releases the
    GIL while it detects.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = CASCADE_WINDOW,
        equalize: bool = True,
        cascade: str | None = None,
    ) -> None:
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = max(CASCADE_WINDOW, int(min_size))
        self.equalize = bool(equalize)  # histogram equalisation: the face scores 7.4, not 5.8
        self.cascade = Path(cascade) if cascade else Path(__file__).with_name(CASCADE_FILE)
        self._local = threading.local()

    def load(self) -> None:
        self._classifier()  # fails here, not on the first request, when the file is unusable

    def _classifier(self):
        classifier = getattr(self._local, "classifier", None)
        if classifier is None:
            import cv2

            classifier = cv2.CascadeClassifier(str(self.cascade))
            if classifier.empty():
                raise RuntimeError(f"cannot load the Haar cascade {self.cascade}")
            self._local.classifier = classifier
        return classifier

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        self.predict_batch({"image": rng.integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)})

    def detect(self, image: np.ndarray) -> list[dict]:
        """Faces in one ``[H, W, 3]`` RGB image, best first."""
        import cv2

        height, width = image.shape[:2]
        if height < self.min_size or width < self.min_size:
            return []
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        boxes, _, weights = self._classifier().detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(
            np.asarray(boxes).reshape(-1, 4), np.ravel(weights), strict=True
        ):
            x, y = max(0, int(x)), max(0, int(y))  # windows lie inside the image; made certain
            box = {
                "x": x,
                "y": y,
                "width": min(int(w), width - x),
                "height": min(int(h), height - y),
            }
            faces.append({"box": box, "confidence": round(confidence(weight), 6)})
        return sorted(faces, key=lambda face: -face["confidence"])

    def predict_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["image"]
        documents = np.empty(len(images), dtype=object)
        documents[:] = [json.dumps(self.detect(image)) for image in images]
        return {"faces_json": documents}


# --- building -------------------------------------------------------------------------------------

# scikit-image's photos (in its wheel, when installed): name -> faces the cascade must find
PHOTOS = {"astronaut": 1, "coffee": 0, "chelsea": 0, "camera": 0, "rocket": 0}
ASTRONAUT_FACE = (222, 112)
"""A pixel in the middle of the astronaut's face (512x512 original): the box must hold it."""


def _photo(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    small = Image.fromarray(image)
    small.thumbnail((size, size))
    return np.asarray(small)


def _check_photos(detector) -> dict:
    """Faces found on scikit-image's bundled photos; ModelBuildFailed where they are wrong."""
    from streaminfer.models.errors import ModelBuildFailed

    found: dict[str, int] = {}
    timings = []
    for name, expected in PHOTOS.items():
        photo = _photo(name)
        started = time.perf_counter()
        faces = detector.detect(photo)
        timings.append(time.perf_counter() - started)
        found[name] = len(faces)
        if len(faces) != expected:
            raise ModelBuildFailed(
                f"face-detect found {len(faces)} faces in {name}, expected {expected}"
            )
    astronaut = detector.detect(_photo("astronaut"))[0]
    box = astronaut["box"]
    inside = (
        box["x"] <= ASTRONAUT_FACE[0] <= box["x"] + box["width"]
        and box["y"] <= ASTRONAUT_FACE[1] <= box["y"] + box["height"]
    )
    if not inside:
        raise ModelBuildFailed(
            f"face-detect's box {box} misses the astronaut's face at {ASTRONAUT_FACE}"
        )
    found["astronaut_256px"] = len(detector.detect(_thumbnail(_photo("astronaut"), 256)))
    if found["astronaut_256px"] != 1:
        raise ModelBuildFailed(
            f"face-detect found {found['astronaut_256px']} faces in the 256 px astronaut"
        )
    return {
        "data_set": "skimage.data photos", "faces_found": found, "astronaut_box": box,
        "astronaut_confidence": astronaut["confidence"],
        "ms_per_photo": round(1000 * sum(timings) / len(timings), 1),
    }  # fmt: skip


def build(version_dir: Path) -> dict:
    """Copy this file as ``model.py`` and the cascade into ``version_dir``; check the copied
    model on scikit-image's photos when scikit-image is installed (a dev dependency)."""
    import importlib.util

    import cv2

    from streaminfer.models.errors import ModelBuildFailed
    from streaminfer.models.python_runtime import find_model_class, import_model_file

    version_dir = Path(version_dir)
    shutil.copyfile(Path(__file__).with_suffix(".py"), version_dir / ARTIFACT)
    source = Path(cv2.data.haarcascades) / CASCADE_FILE
    if not source.is_file():
        raise ModelBuildFailed(f"OpenCV has no {CASCADE_FILE} under {source.parent}")
    shutil.copyfile(source, version_dir / CASCADE_FILE)

    # the model as it will be served: the copied file, imported as the python backend does
    name = f"streaminfer_face_detect_build_{id(version_dir)}"
    try:
        detector = find_model_class(
            import_model_file(version_dir / ARTIFACT, name), "HaarFaceDetector"
        )()
    finally:
        sys.modules.pop(name, None)
    detector.load()
    metrics = {"opencv": cv2.__version__, "cascade": CASCADE_FILE}
    if importlib.util.find_spec("skimage") is None:
        return {**metrics, "photos_checked": False}
    return {**metrics, "photos_checked": True, **_check_photos(detector)}
