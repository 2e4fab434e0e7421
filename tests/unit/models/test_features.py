"""model.yaml's ``features`` section (models/features.py) and the ``entity_id`` input it enables."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from streaminfer.models.builtin import template_path
from streaminfer.models.config import load_model_config
from streaminfer.models.errors import InvalidInput, ModelConfigError
from streaminfer.models.features import MAX_ENTITY_ID_CHARS
from streaminfer.models.friendly import friendly_to_tensors
from streaminfer.models.validation import validate_tensors

TEMPLATE = yaml.safe_load(template_path("tabular-classify").read_text())
NAMES = TEMPLATE["friendly"]["inputs"]["features"]["names"]


def _load(tmp_path: Path, raw: dict):
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(raw))
    return load_model_config(tmp_path)


def _with(features) -> dict:
    raw = copy.deepcopy(TEMPLATE)
    raw["features"] = features
    return raw


def test_the_template_declares_the_example_table(tmp_path: Path) -> None:
    section = _load(tmp_path, TEMPLATE).features
    assert section == {
        "url": "sqlite:///{version_dir}/features.sqlite",
        "table": "features",
        "key_column": "entity_id",
        "input": "features",
        "columns": NAMES,
        "cache_ttl_s": 300,
        "timeout_s": 5.0,
    }


def test_no_section_is_no_lookup(tmp_path: Path) -> None:
    raw = copy.deepcopy(TEMPLATE)
    del raw["features"]
    config = _load(tmp_path, raw)
    assert config.features == {}
    with pytest.raises(InvalidInput, match="unknown input keys"):
        friendly_to_tensors(config, {"entity_id": "0"})


def test_defaults_and_explicit_columns(tmp_path: Path) -> None:
    section = _load(tmp_path, _with({"url": "sqlite:///x.db"})).features
    assert (section["table"], section["key_column"], section["input"]) == (
        "features",
        "entity_id",
        "features",
    )
    assert (
        section["columns"] == NAMES
        and section["cache_ttl_s"] == 300
        and section["timeout_s"] == 5.0
    )
    assert (
        _load(tmp_path, _with({"url": "sqlite:///x.db", "timeout_s": 1})).features["timeout_s"]
        == 1.0
    )
    columns = [f"c{i}" for i in range(30)]
    assert (
        _load(
            tmp_path, _with({"url": "sqlite:///x.db", "columns": columns, "cache_ttl_s": 0})
        ).features["columns"]
        == columns
    )


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ("sqlite:///x.db", "must be a mapping"),
        ({"url": "sqlite:///x.db", "tabel": "t"}, r"unknown keys \['tabel'\]"),
        ({"table": "t"}, "features.url must be a SQLAlchemy URL"),
        ({"url": "  "}, "features.url"),
        ({"url": "sqlite:///x.db", "table": ""}, "features.table"),
        ({"url": "sqlite:///x.db", "key_column": 7}, "features.key_column"),
        ({"url": "sqlite:///x.db", "input": "pixels"}, "features.input 'pixels'"),
        (
            {"url": "sqlite:///x.db", "columns": ["a", "b"]},
            "2 columns but input 'features' has shape",
        ),
        ({"url": "sqlite:///x.db", "columns": ["a"] * 30}, "distinct column names"),
        ({"url": "sqlite:///x.db", "columns": "mean radius"}, "distinct column names"),
        (
            {"url": "sqlite:///x.db", "columns": [*NAMES[:29], "entity_id"]},
            "must not include the key column",
        ),
        ({"url": "sqlite:///x.db", "cache_ttl_s": -1}, "cache_ttl_s must be an int >= 0"),
        ({"url": "sqlite:///x.db", "cache_ttl_s": True}, "cache_ttl_s must be an int >= 0"),
        ({"url": "sqlite:///x.db", "cache_ttl_s": 1.5}, "cache_ttl_s must be an int >= 0"),
        (
            {"url": "sqlite:///x.db", "timeout_s": 0},
            r"timeout_s must be a number of seconds in \(0, 300\]",
        ),
        ({"url": "sqlite:///x.db", "timeout_s": float("nan")}, "timeout_s must be"),
        ({"url": "sqlite:///x.db", "timeout_s": 301}, "timeout_s must be"),
        ({"url": "sqlite:///x.db", "timeout_s": "5"}, "timeout_s must be"),
        ({"url": "sqlite:///x.db", "timeout_s": True}, "timeout_s must be"),
    ],
)
def test_bad_sections_are_clear_errors(tmp_path: Path, features, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message) as info:
        _load(tmp_path, _with(features))
    assert "model.yaml" in str(info.value)  # names the file


def test_columns_are_required_without_named_features(tmp_path: Path) -> None:
    raw = _with({"url": "sqlite:///x.db"})
    del raw["friendly"]
    with pytest.raises(ModelConfigError, match="features.columns is required"):
        _load(tmp_path, raw)


@pytest.fixture
def config(tmp_path: Path):
    return _load(tmp_path, TEMPLATE)


def test_an_entity_id_becomes_a_bytes_tensor(config) -> None:
    tensors = friendly_to_tensors(config, {"entity_id": "0"})
    assert list(tensors) == ["entity_id"] and tensors["entity_id"].tolist() == ["0"]
    many = friendly_to_tensors(config, {"entity_id": ["1", "2", "3"]})
    assert many["entity_id"].shape == (3,)
    validate_tensors(config, many)  # what intake checks again on the worker
    # SQL-looking ids are data: accepted here, bound as parameters by the worker
    assert (
        friendly_to_tensors(config, {"entity_id": "0' OR '1'='1"})["entity_id"][0] == "0' OR '1'='1"
    )
    # Kafka-direct: UTF-8 bytes
    validate_tensors(config, {"entity_id": np.array([b"12"], dtype=object)})


def test_features_still_work(config) -> None:
    tensors = friendly_to_tensors(config, {"features": dict.fromkeys(NAMES, 1.0)})
    assert tensors["features"].shape == (1, 30)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "1-128 printable characters"),
        ("   ", "1-128 printable characters"),
        ("x" * (MAX_ENTITY_ID_CHARS + 1), "got 129 characters"),
        ("a\nb", "printable"),
        ("\ud800", "printable"),
        (0, "must be a string"),
        (None, "must be a string"),
        ({"id": "0"}, "must be a string"),
        (["0", 1], "item 1 must be a string"),
        ([], "0 ids"),
        (["0"] * 65, "65 ids, must be between 1 and 64"),
    ],
)
def test_hostile_entity_ids_are_refused(config, value, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        friendly_to_tensors(config, {"entity_id": value})


def test_entity_id_and_features_together_are_refused(config) -> None:
    # the rule: one or the other; a request never mixes looked-up and sent features
    with pytest.raises(InvalidInput, match="either 'entity_id' or the inputs, not both"):
        friendly_to_tensors(config, {"entity_id": "0", "features": dict.fromkeys(NAMES, 1.0)})
    with pytest.raises(InvalidInput, match="unexpected"):
        validate_tensors(
            config,
            {"entity_id": np.array(["0"], dtype=object), "features": np.ones((1, 30), np.float32)},
        )


def test_a_bad_kafka_entity_tensor_is_refused(config) -> None:
    with pytest.raises(InvalidInput, match="BYTES tensor"):
        validate_tensors(config, {"entity_id": np.zeros((1,), np.float32)})
    with pytest.raises(InvalidInput, match="BYTES tensor"):
        validate_tensors(config, {"entity_id": np.array([["0"]], dtype=object)})
    with pytest.raises(InvalidInput, match="not UTF-8"):
        validate_tensors(config, {"entity_id": np.array([b"\xff"], dtype=object)})


def test_the_example_table_holds_every_row_under_its_number(tmp_path: Path) -> None:
    import sqlite3

    from sklearn.datasets import load_breast_cancer

    from streaminfer.models.builtin.tabular_classify import build_feature_table

    assert build_feature_table(tmp_path / "f.sqlite") == 569
    with sqlite3.connect(tmp_path / "f.sqlite") as db:
        names = [row[1] for row in db.execute("PRAGMA table_info(features)")]
        rows = dict((r[0], r[1:]) for r in db.execute("SELECT * FROM features"))
    assert names == ["entity_id", *NAMES]  # the template's named_features: columns need no listing
    assert sorted(rows, key=int) == [str(i) for i in range(569)]
    data = load_breast_cancer().data
    assert np.array_equal(np.asarray(rows["0"]), data[0]) and np.array_equal(
        np.asarray(rows["568"]), data[568]
    )


def test_the_task_signature_says_it_takes_entity_ids_and_never_the_url(
    config, tmp_path: Path
) -> None:
    signature = config.signature()  # what GET /v1/tasks shows
    assert signature["feature_lookup"] == {"input": "entity_id", "fills": "features", "columns": 30}
    assert "sqlite" not in str(signature)
    plain = copy.deepcopy(TEMPLATE)
    del plain["features"]
    (tmp_path / "plain").mkdir()
    assert _load(tmp_path / "plain", plain).signature()["feature_lookup"] is None
