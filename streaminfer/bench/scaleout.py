"""The ``scaleout`` scenario: closed-loop throughput through Kafka with 1 and 2 worker processes in
one consumer group, and with 2 and 6 partitions per topic. Each deployment gets a topic prefix of
its own, so its topics are created afresh with its partition count."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .figures import Figures, table
from .kafka_load import drive_kafka
from .stack import bench_worker


@dataclass(frozen=True)
class Deployment:
    workers: int
    partitions: int
    instances: int | None = None
    """Model instances (batches computing at once, one thread each on 2 cores) per worker;
    None = model.yaml's."""

    @property
    def label(self) -> str:
        label = f"{self.workers} worker{'s' * (self.workers > 1)} x {self.partitions} partitions"
        if self.instances is not None:
            label += f", {self.instances} model instance{'s' * (self.instances > 1)} each"
        return label


# NOTE: on 2 cores, 2 workers with model.yaml's 2 instances each run 4 compute threads on 2 cores;
# with 1 instance each, every worker has a core, as one worker per core (or GPU) would in production.
DEPLOYMENTS = (
    Deployment(workers=1, partitions=6),
    Deployment(workers=2, partitions=6, instances=1),
    Deployment(workers=2, partitions=6),
    Deployment(workers=1, partitions=2),
    Deployment(workers=2, partitions=2, instances=1),
)


def bench_scaleout(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    max_batch_size: int,
    concurrency: int,
    threads: int | None,
    out_dir: Path,
    deployments: tuple[Deployment, ...] = DEPLOYMENTS,
) -> list[dict]:
    """One closed-loop run of ``texts`` per deployment, after a warm-up once all its workers consume."""
    rows = []
    for deployment in deployments:
        with bench_worker(
            kafka,
            redis_url,
            repository,
            max_batch_size,
            threads,
            out_dir,
            workers=deployment.workers,
            partitions=deployment.partitions,
            instances=deployment.instances,
        ) as workers:
            asyncio.run(drive_kafka(kafka, workers.prefix, texts[:50], concurrency, "warm-up"))
            run = asyncio.run(
                drive_kafka(kafka, workers.prefix, texts, concurrency, deployment.label)
            )
        rows.append(
            {
                **asdict(deployment),
                **asdict(run.figures(deployment.label, max_batch_size)),
                "results_per_worker": sorted(run.workers.values(), reverse=True),
            }
        )
    return rows


def scaleout_summary(rows: list[dict]) -> str:
    """The ``scaleout`` section of the printed report: the table, then each deployment's items/s
    beside the first one's."""
    names = [f.name for f in fields(Figures)]
    lines = [table([Figures(**{name: row[name] for name in names}) for row in rows])]
    base = rows[0]
    for row in rows:
        lines.append(
            f"  {row['scenario']}: {row['throughput'] / base['throughput']:.2f}x of {base['scenario']}; "
            f"results per worker {row['results_per_worker']}"
        )
    return "\n".join(lines)
