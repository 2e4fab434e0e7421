"""Tests for models.python_runtime: a model.py written by each test, served through the same
``Model`` interface (validation, output checks, versions, the repository's cache) as the other
backends, and every way a model.py can be wrong."""

from __future__ import annotations

import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from streaminfer.models.config import load_model_config
from streaminfer.models.errors import InferenceFailed, InvalidInput, ModelConfigError
from streaminfer.models.python_runtime import MODULE_PREFIX, PythonModel
from streaminfer.models.repository import ModelRepository, create_model

SCALER = """
import numpy as np

CALLS = []

class Scaler:
    def __init__(self, factor=2, device=None):
        self.factor = factor
        self.device = device
        self.loaded = False
        self.warmed = False

    def load(self):
        self.loaded = True

    def warmup(self):
        self.warmed = True

    def predict_batch(self, inputs):
        CALLS.append(len(inputs["x"]))
        x = inputs["x"]
        return {"y": x * self.factor, "count": np.full(len(x), x.shape[1], dtype=np.int64)}
"""


def _yaml(**overrides) -> dict:
    config = {
        "task": "tiny-py",
        "backend": "python",
        "max_batch_size": 4,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [3]},
            {"name": "count", "datatype": "INT64", "shape": []},
        ],
    }
    config.update(overrides)
    return config


def _source(text: str) -> bytes:
    return textwrap.dedent(text).encode()


@pytest.fixture
def python_model(make_model_dir):
    """``python_model(source, **yaml_overrides)``: an unloaded PythonModel of that model.py."""

    def make(source: str, versions=("1",), **overrides) -> PythonModel:
        model_dir = make_model_dir(
            _yaml(**overrides), versions=versions, files={"model.py": _source(source)}
        )
        model = create_model(load_model_config(model_dir), device="cpu")
        assert isinstance(model, PythonModel)
        return model

    return make


X = np.arange(6, dtype=np.float32).reshape(2, 3)


# --- serving --------------------------------------------------------------------------------------


def test_load_warmup_and_predict(python_model):
    model = python_model(SCALER, python={"parameters": {"factor": 3}})
    model.load()
    model.warmup()
    instance = model._instance
    assert instance.loaded and instance.warmed and instance.factor == 3
    assert instance.device == "cpu", "a constructor that takes device gets the resolved one"
    outputs = model.predict_batch({"x": X})
    np.testing.assert_array_equal(outputs["y"], X * 3)
    assert outputs["count"].tolist() == [3, 3] and outputs["count"].dtype == np.int64


def test_the_one_class_with_predict_batch_is_found(python_model):
    source = """
    import numpy as np
    from collections import OrderedDict   # an imported class is not a candidate

    class Helper:                          # no predict_batch: not a candidate either
        pass

    class Only:
        def load(self):
            pass

        def predict_batch(self, inputs):
            x = inputs["x"]
            return {"y": x + 1, "count": np.zeros(len(x), dtype=np.int64)}
    """
    model = python_model(source)
    model.load()
    np.testing.assert_array_equal(model.predict_batch({"x": X})["y"], X + 1)


def test_two_candidate_classes_need_a_name(python_model):
    two = SCALER + "\nclass Other(Scaler):\n    pass\n"
    with pytest.raises(
        ModelConfigError, match=r"2 classes with a predict_batch \(\['Other', 'Scaler'\]\)"
    ):
        python_model(two).load()
    named = python_model(two, python={"class": "Other", "parameters": {"factor": 5}})
    named.load()
    assert type(named._instance).__name__ == "Other"
    np.testing.assert_array_equal(named.predict_batch({"x": X})["y"], X * 5)


def test_no_such_class(python_model):
    with pytest.raises(
        ModelConfigError, match=r"has no class 'Missing' \(python.class\); it has \['Scaler'\]"
    ):
        python_model(SCALER, python={"class": "Missing"}).load()


def test_a_class_without_load_is_refused(python_model):
    source = """
    class NoLoad:
        def predict_batch(self, inputs):
            return {}
    """
    with pytest.raises(ModelConfigError, match=r"class NoLoad has no method \['load'\]"):
        python_model(source).load()


def test_without_warmup_the_dummy_batches_run(python_model):
    source = SCALER.replace("    def warmup(self):\n        self.warmed = True\n", "")
    model = python_model(source)
    model.load()
    model.warmup()
    calls = sys.modules[type(model._instance).__module__].CALLS
    assert calls == [1, 4], "one item, then max_batch_size, as for the other backends"


# --- what goes wrong ------------------------------------------------------------------------------


def test_model_py_missing(make_model_dir):
    model_dir = make_model_dir(_yaml(), files={})
    model = create_model(load_model_config(model_dir), device="cpu")
    with pytest.raises(ModelConfigError, match=r"artifact .*model\.py is missing"):
        model.load()


def test_syntax_error_names_the_line(python_model):
    with pytest.raises(ModelConfigError, match=r"model\.py is not valid Python: .*line 3"):
        python_model("import numpy\n\ndef broken(:\n    pass\n").load()


def test_an_exception_at_import(python_model):
    with pytest.raises(ModelConfigError, match=r"importing .*model\.py raised ZeroDivisionError"):
        python_model("x = 1 / 0\n").load()
    with pytest.raises(
        ModelConfigError, match=r"raised SystemExit"
    ):  # model code cannot end the worker
        python_model("import sys\nsys.exit(3)\n").load()


def test_load_raising_and_bad_parameters(python_model):
    failing = SCALER.replace("self.loaded = True", "raise FileNotFoundError('weights.bin')")
    with pytest.raises(
        ModelConfigError, match=r"Scaler of .* failed to load: FileNotFoundError: weights.bin"
    ):
        python_model(failing).load()
    with pytest.raises(ModelConfigError, match=r"failed to load: TypeError"):
        python_model(SCALER, python={"parameters": {"no_such_argument": 1}}).load()


def test_warmup_raising_is_a_config_error(python_model):
    model = python_model(SCALER.replace("self.warmed = True", "raise RuntimeError('cold')"))
    model.load()
    with pytest.raises(ModelConfigError, match=r"warmup\(\) raised RuntimeError: cold"):
        model.warmup()


def test_predict_batch_raising_is_a_retriable_inference_failure(python_model):
    model = python_model(SCALER.replace('CALLS.append(len(inputs["x"]))', "raise KeyError('oops')"))
    model.load()
    with pytest.raises(InferenceFailed, match=r"tiny-py v1: 'oops'") as caught:
        model.predict_batch({"x": X})
    assert caught.value.retriable and caught.value.code == "INFERENCE_FAILED"


def test_inputs_are_validated_before_the_model_sees_them(python_model):
    model = python_model(SCALER)
    model.load()
    with pytest.raises(InvalidInput, match="expected shape"):
        model.predict_batch({"x": np.zeros((2, 4), dtype=np.float32)})
    with pytest.raises(InvalidInput, match="expected datatype FP32"):
        model.predict_batch({"x": np.zeros((2, 3), dtype=np.float64)})
    with pytest.raises(InvalidInput, match="batch of 5 items"):
        model.predict_batch({"x": np.zeros((5, 3), dtype=np.float32)})
    assert sys.modules[type(model._instance).__module__].CALLS == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('return [inputs["x"]]', r"predict_batch returned list, expected a dict"),
        ('return {"y": inputs["x"]}', r"produced no output 'count'"),
        (
            'return {"y": inputs["x"][:, :2], "count": np.zeros(2, dtype=np.int64)}',
            r"output 'y' has shape \[2, 2\], model.yaml declares \[2, 3\]",
        ),
        (
            'return {"y": inputs["x"], "count": np.zeros((2,), dtype=np.float64) + 0.5}',
            r"output 'count' is float64, model.yaml declares INT64",
        ),
        (
            'return {"y": np.array([["a"] * 3] * 2), "count": np.zeros(2, dtype=np.int64)}',
            r"output 'y' is <U1, model.yaml declares FP32",
        ),
    ],
)
def test_wrong_outputs_are_config_errors(python_model, body, message):
    source = f"""
    import numpy as np

    class Wrong:
        def load(self):
            pass

        def predict_batch(self, inputs):
            {body}
    """
    model = python_model(source)
    model.load()
    with pytest.raises(ModelConfigError, match=message):
        model.predict_batch({"x": X})


def test_bytes_outputs_must_be_text(python_model):
    source = """
    import numpy as np

    class Tagger:
        def load(self):
            pass

        def predict_batch(self, inputs):
            tags = np.empty(len(inputs["x"]), dtype=object)
            tags[:] = [TAG] * len(tags)
            return {"tag": tags}
    """
    outputs = [{"name": "tag", "datatype": "BYTES", "shape": []}]
    good = python_model(source.replace("[TAG]", '["ok"]'), outputs=outputs)
    good.load()
    assert good.predict_batch({"x": X})["tag"].tolist() == ["ok", "ok"]
    bad = python_model(source.replace("[TAG]", "[7]"), outputs=outputs)
    bad.load()
    with pytest.raises(
        ModelConfigError, match=r"output 'tag' is object, model.yaml declares BYTES"
    ):
        bad.predict_batch({"x": X})


def test_python_section_checks():
    from streaminfer.models.config_sections import parse_python

    assert parse_python(None, "python") == {"class": None, "parameters": {}}
    assert parse_python({"class": "A", "parameters": {"k": 1}}, "python") == {
        "class": "A",
        "parameters": {"k": 1},
    }
    for raw, backend, message in [
        ({"class": "A"}, "onnxruntime", "needs backend python"),
        ({"class": "not a name"}, "python", "python.class must be a class name"),
        ({"parameters": {"1x": 2}}, "python", "python.parameters must map argument names"),
        ({"module": "x"}, "python", "python must be a mapping with 'class'"),
    ]:
        with pytest.raises(ModelConfigError, match=message):
            parse_python(raw, backend)


# --- versions and reload --------------------------------------------------------------------------


def _versioned(factor: int) -> bytes:
    return _source(SCALER.replace("factor=2", f"factor={factor}"))


def test_two_versions_side_by_side(make_model_dir):
    model_dir = make_model_dir(_yaml(), versions=())
    for version, factor in (("1", 10), ("2", 20)):
        (model_dir / version).mkdir()
        (model_dir / version / "model.py").write_bytes(_versioned(factor))
    repository = ModelRepository(make_model_dir.repo, device="cpu")
    one, two = repository.load("tiny-py", "1"), repository.load("tiny-py", "2")
    assert repository.load("tiny-py") is two, "the default is the newest"
    np.testing.assert_array_equal(one.predict_batch({"x": X})["y"], X * 10)
    np.testing.assert_array_equal(two.predict_batch({"x": X})["y"], X * 20)
    modules = {type(one._instance).__module__, type(two._instance).__module__}
    assert len(modules) == 2 and all(
        name.startswith(f"{MODULE_PREFIX}.tiny_py.v") for name in modules
    )
    # each version has its own module state
    assert sys.modules[type(one._instance).__module__].CALLS == [2]
    with ThreadPoolExecutor(4) as pool:  # and both serve from several threads at once
        results = list(pool.map(lambda m: m.predict_batch({"x": X})["y"], [one, two] * 8))
    assert all(np.array_equal(r, X * (10 if i % 2 == 0 else 20)) for i, r in enumerate(results))


def test_reload_runs_the_code_as_it_is_now(make_model_dir):
    """Rewritten in the same second with the same size, so a cache keyed on mtime and size
    (as __pycache__ is) would hand back the old code."""
    model_dir = make_model_dir(_yaml(), files={"model.py": _versioned(3)})
    repository = ModelRepository(make_model_dir.repo, device="cpu")
    first = repository.load("tiny-py", "1")
    np.testing.assert_array_equal(first.predict_batch({"x": X})["y"], X * 3)
    (model_dir / "1" / "model.py").write_bytes(_versioned(4))
    repository.unload("tiny-py", "1")
    second = repository.load("tiny-py", "1")
    assert second is not first
    np.testing.assert_array_equal(second.predict_batch({"x": X})["y"], X * 4)
    np.testing.assert_array_equal(first.predict_batch({"x": X})["y"], X * 3)  # the old one lives on
    assert not (model_dir / "1" / "__pycache__").exists(), "nothing written into the repository"


def test_the_module_goes_when_the_model_does(python_model):
    import gc

    model = python_model(SCALER)
    model.load()
    name = type(model._instance).__module__
    assert name in sys.modules
    del model
    gc.collect()
    assert name not in sys.modules
