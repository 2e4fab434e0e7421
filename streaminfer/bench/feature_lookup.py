"""Feature lookup latency, cache hit against miss: ``python -m streaminfer.bench.feature_lookup``.

The worker's own :class:`~streaminfer.streams.features.FeatureLookup` on tabular-classify's
example table (SQLite, built here) and an embedded Redis: per batch size, the time of one
``fill`` when every row comes from the database (the cache emptied first) and when every row
comes from Redis. Prints one JSON line per batch size (median and p99 in ms)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASK = "tabular-classify"


@dataclass
class _Item:  # what FeatureLookup.fill reads of a PendingRequest
    request: object
    inputs: dict


@dataclass
class _Request:
    request_id: str


class _Model:
    version = "1"

    def __init__(self, config, version_dir: Path) -> None:
        self.config, self.path = config, version_dir


async def measure(batch_sizes: list[int], rounds: int) -> list[dict]:
    import redis.asyncio as aioredis
    import yaml

    from streaminfer import embedded
    from streaminfer.models.builtin import template_path
    from streaminfer.models.builtin.tabular_classify import FEATURE_TABLE, build_feature_table
    from streaminfer.models.config import load_model_config
    from streaminfer.models.features import resolve_url
    from streaminfer.schemas.keys import feature_key
    from streaminfer.streams.features import FeatureLookup, store_id

    with tempfile.TemporaryDirectory() as tmp, embedded.redis() as server:
        model_dir = Path(tmp) / TASK
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "model.yaml").write_text(
            yaml.safe_dump(yaml.safe_load(template_path(TASK).read_text()))
        )
        build_feature_table(model_dir / "1" / FEATURE_TABLE)
        model = _Model(load_model_config(model_dir), model_dir / "1")
        client = aioredis.Redis.from_url(embedded.redis_address(server))
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        lookup = FeatureLookup(lambda: client, prefix)
        section = model.config.features
        store = store_id(resolve_url(section["url"], model_dir, model_dir / "1"), section["table"])
        rng = np.random.default_rng(0)
        figures = []
        try:
            for size in batch_sizes:
                times: dict[str, list[float]] = {"miss": [], "hit": []}
                for _ in range(rounds):
                    ids = [str(i) for i in rng.choice(569, size, replace=False)]
                    await client.delete(
                        *[feature_key(prefix, TASK, model.version, store, e) for e in ids]
                    )
                    for kind in ("miss", "hit"):
                        items = [
                            _Item(
                                _Request(str(uuid.uuid4())),
                                {"entity_id": np.array([e], dtype=object)},
                            )
                            for e in ids
                        ]
                        started = time.perf_counter()
                        failed, looked = await lookup.fill(model, items)
                        times[kind].append((time.perf_counter() - started) * 1000.0)
                        assert not failed and {v.source for v in looked.values()} == (
                            {"db"} if kind == "miss" else {"cache"}
                        )
                figures.append(
                    {
                        "batch": size,
                        "rounds": rounds,
                        **{
                            f"{kind}_{stat}_ms": round(value, 3)
                            for kind, values in times.items()
                            for stat, value in (
                                ("median", statistics.median(values)),
                                ("p99", float(np.percentile(values, 99))),
                            )
                        },
                    }
                )
        finally:
            lookup.close()
            await client.aclose()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    for line in asyncio.run(measure(sizes, args.rounds)):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
