"""``streaminfer features load``: copy a task's feature table (as its model.yaml declares it, e.g.
tabular-classify's example SQLite table built by ``make models``) into the feature store database
(``STREAMINFER_FEATURE_STORE_URL``, e.g. the Postgres of docker-compose), so workers pointed there
find the same rows. The URLs may hold passwords: they are never printed."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "copy_table"]

CHUNK_ROWS = 1000


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "features", help="copy a task's feature table into the feature store database"
    )
    parser.add_argument("action", choices=["load"])
    parser.add_argument("--task", default="tabular-classify")
    parser.add_argument(
        "--url", help="the target database (default: STREAMINFER_FEATURE_STORE_URL)"
    )
    parser.add_argument(
        "--if-absent", action="store_true", help="do nothing when the table exists there"
    )
    parser.set_defaults(func=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    from streaminfer.models.config import load_repository_configs
    from streaminfer.models.features import resolve_url

    from .settings import Settings

    settings = Settings()
    target = args.url or (
        settings.feature_store_url.get_secret_value() if settings.feature_store_url else None
    )
    if not target:
        print(
            "streaminfer features: no target; set STREAMINFER_FEATURE_STORE_URL or pass --url",
            file=sys.stderr,
        )
        return 2
    config = load_repository_configs(settings.model_repository).get(args.task)
    if config is None or not config.features or config.default_version is None:
        print(
            f"streaminfer features: task {args.task!r} is not built with a features section",
            file=sys.stderr,
        )
        return 2
    section = config.features
    source = resolve_url(section["url"], config.path, config.version_path())
    rows = copy_table(
        source,
        target,
        section["table"],
        section["key_column"],
        section["columns"],
        if_absent=args.if_absent,
    )
    print(
        f"{args.task}: {rows} rows in table {section['table']!r}"
        if rows is not None
        else f"{args.task}: table {section['table']!r} exists there; left as it is"
    )
    return 0


def copy_table(
    source_url: str,
    target_url: str,
    table: str,
    key_column: str,
    columns: list[str],
    *,
    if_absent: bool = False,
) -> int | None:
    """Replace ``table`` in the target by the source's rows (key as text, features as floats);
    returns the rows copied, or None when ``if_absent`` and the table exists there."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    target_table = sa.Table(
        table,
        metadata,
        sa.Column(key_column, sa.Text, primary_key=True),
        *(sa.Column(name, sa.Float) for name in columns),
    )
    source_table = sa.table(table, *(sa.column(name) for name in [key_column, *columns]))
    source, target = sa.create_engine(source_url), sa.create_engine(target_url)
    try:
        with target.begin() as out:
            if sa.inspect(out).has_table(table):
                if if_absent:
                    return None
                target_table.drop(out)
            target_table.create(out)
            copied = 0
            with source.connect() as into:
                result = into.execute(sa.select(source_table)).mappings()
                while chunk := result.fetchmany(CHUNK_ROWS):
                    out.execute(
                        target_table.insert(),
                        [
                            {key_column: str(row[key_column]), **{c: row[c] for c in columns}}
                            for row in chunk
                        ],
                    )
                    copied += len(chunk)
        return copied
    finally:
        source.dispose()
        target.dispose()
