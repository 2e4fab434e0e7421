"""``streaminfer features load``: a task's feature table copied into another database (here a
second SQLite file standing in for docker-compose's Postgres), read back by the worker's lookup."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from streaminfer import cli
from streaminfer.models.builtin import template_path
from streaminfer.models.builtin.tabular_classify import FEATURE_TABLE, build_feature_table

TASK = "tabular-classify"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    version = tmp_path / "repo" / TASK / "1"
    version.mkdir(parents=True)
    shutil.copyfile(template_path(TASK), version.parent / "model.yaml")
    build_feature_table(version / FEATURE_TABLE)
    return tmp_path / "repo"


def test_load_copies_every_row_and_if_absent_leaves_it(
    repository: Path, tmp_path: Path, monkeypatch, capsys
):
    target = tmp_path / "store.sqlite"
    monkeypatch.setenv("STREAMINFER_MODEL_REPOSITORY", str(repository))
    monkeypatch.setenv("STREAMINFER_FEATURE_STORE_URL", f"sqlite:///{target}")
    with pytest.raises(SystemExit) as exited:
        cli.main(["features", "load"])
    assert exited.value.code == 0 and "569 rows" in capsys.readouterr().out
    with (
        contextlib.closing(sqlite3.connect(target)) as copy,
        contextlib.closing(sqlite3.connect(repository / TASK / "1" / FEATURE_TABLE)) as original,
    ):
        query = "SELECT * FROM features ORDER BY entity_id"
        assert copy.execute(query).fetchall() == original.execute(query).fetchall()
        copy.execute("DELETE FROM features WHERE entity_id = '0'")
        copy.commit()
    with pytest.raises(SystemExit) as exited:
        cli.main(["features", "load", "--if-absent"])
    assert exited.value.code == 0 and "left as it is" in capsys.readouterr().out
    with contextlib.closing(sqlite3.connect(target)) as copy:
        assert copy.execute("SELECT count(*) FROM features").fetchone() == (568,)


def test_load_without_a_target_or_a_section_is_a_clear_error(repository: Path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMINFER_MODEL_REPOSITORY", str(repository))
    monkeypatch.delenv("STREAMINFER_FEATURE_STORE_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main(["features", "load"])
    assert exited.value.code == 2 and "STREAMINFER_FEATURE_STORE_URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["features", "load", "--task", "text-embedding", "--url", "sqlite://"])
    assert exited.value.code == 2 and "not built with a features section" in capsys.readouterr().err


def test_the_feature_store_url_is_a_secret_setting() -> None:
    from streaminfer.settings import Settings

    settings = Settings(
        feature_store_url="postgresql+psycopg://app:s3cret@db.example:5432/features"
    )
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.summary())
    assert (
        settings.summary()["feature_store_url"]
        == "postgresql+psycopg://app:***@db.example:5432/features"
    )
    assert Settings().summary()["feature_store_url"] is None
