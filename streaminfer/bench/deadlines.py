"""The ``deadlines`` scenario: goodput under overload, deadline-aware scheduling against FIFO.

One worker's closed-loop saturation first; then, on a worker started with
``STREAMINFER_WORKER_SCHEDULING=deadline`` and on one with ``=fifo``, open loop at
``OVERLOAD`` x that rate, each request Avro-direct to Kafka with ``deadline_at`` set: a seeded
mix of *tight* deadlines (4 x one batch-1 compute of the raw model, plus the transport floor's
p50, because the deadline counts from the request's ``created_at`` and the Kafka round trip is
spent before any model runs) and *loose* ones (2 s). Each result is judged at the downstream
consumer: on time when it is SUCCEEDED and read before its ``deadline_at``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from streaminfer.schemas.records import Status

from .kafka_load import DeadlineDrive, Received, drive_deadlines, drive_kafka
from .stack import bench_worker

OVERLOAD = 1.5
TIGHT_SHARE = 0.5
TIGHT_COMPUTES = 4
LOOSE_MS = 2000.0
GOODPUT_SHARE_OF_SATURATION = 0.9
GOODPUT_OVER_FIFO = 1.5
MODES = ("deadline", "fifo")
OUTCOMES = ("on_time", "late_success", "shed_early", "expired_late", "failed", "missing")
"""How each sent request ended: SUCCEEDED before its deadline; SUCCEEDED after it; EXPIRED with
DEADLINE_UNREACHABLE (shed before taking model time, its deadline still ahead); EXPIRED with
DEADLINE_EXCEEDED (its deadline had already passed when the worker looked: on intake, while
queued or as its batch started; no model time either); any other result; no result within the wait."""


def deadline_budgets(
    compute_p50_ms: float, floor_p50_ms: float, loose_ms: float = LOOSE_MS
) -> dict[str, float]:
    """Each class's deadline in ms after ``created_at``: tight = 4 computes + the transport floor."""
    return {
        "tight": round(TIGHT_COMPUTES * compute_p50_ms + floor_p50_ms, 1),
        "loose": float(loose_ms),
    }


def deadline_mix(count: int, tight_share: float = TIGHT_SHARE, seed: int = 12) -> list[str]:
    """``count`` classes, round(count x tight_share) of them ``tight``, the rest ``loose``, in a seeded
    random order (so neither class arrives in runs)."""
    tight = round(count * tight_share)
    classes = ["tight"] * tight + ["loose"] * (count - tight)
    random.Random(seed).shuffle(classes)
    return classes


def outcome(received: Received | None, deadline_at_ms: int) -> str:
    """Which of ``OUTCOMES`` one request had."""
    if received is None:
        return "missing"
    result = received.result
    if result.status == Status.SUCCEEDED:
        return "on_time" if received.arrival_ms <= deadline_at_ms else "late_success"
    if result.status == Status.EXPIRED:
        code = result.error.code if result.error else ""
        if code == "DEADLINE_UNREACHABLE":
            return "shed_early"
        if code == "DEADLINE_EXCEEDED":
            return "expired_late"
    return "failed"


def account(drive: DeadlineDrive) -> dict:
    """Every sent request's outcome, per class and in all; goodput = on-time results per second of
    the run, the run being the offered schedule or, when on-time results came later, up to the
    last of them."""
    per_class: dict[str, Counter[str]] = {}
    last_on_time_ms = drive.started_ms
    late_at_worker = 0
    for request_id, kind in drive.sent.items():
        received = drive.received.get(request_id)
        ended = outcome(received, drive.deadlines_ms[request_id])
        per_class.setdefault(kind, Counter())[ended] += 1
        if ended == "on_time":
            last_on_time_ms = max(last_on_time_ms, received.arrival_ms)
        elif (
            ended == "late_success"
            and received.result.completed_at > drive.deadlines_ms[request_id]
        ):
            late_at_worker += (
                1  # the rest were done in time at the worker and late on the way to the consumer
            )
    total: Counter[str] = sum(per_class.values(), Counter())
    seconds = max(drive.offered_s, (last_on_time_ms - drive.started_ms) / 1000.0)
    classes = {
        kind: {
            "sent": sum(counts.values()),
            **{o: counts[o] for o in OUTCOMES},
            "on_time_share": round(counts["on_time"] / max(1, sum(counts.values())), 4),
        }
        for kind, counts in sorted(per_class.items())
    }
    sent = len(drive.sent)
    return {
        "sent": sent,
        "accounted": sum(total[o] for o in OUTCOMES if o != "missing"),
        **{o: total[o] for o in OUTCOMES},
        "late_at_worker": late_at_worker,
        "seconds": round(seconds, 3),
        "goodput_per_s": round(total["on_time"] / seconds, 2) if seconds > 0 else 0.0,
        "on_time_share": round(total["on_time"] / max(1, sent), 4),
        "classes": classes,
        "timed_out": drive.timed_out,
    }


def check_deadline_targets(saturation_per_s: float, goodput_per_s: dict[str, float]) -> dict:
    """Deadline-aware goodput >= 90 % of closed-loop saturation and >= 1.5 x FIFO's."""
    deadline, fifo = goodput_per_s.get("deadline"), goodput_per_s.get("fifo")
    share = None if deadline is None or saturation_per_s <= 0 else deadline / saturation_per_s
    ratio = (
        None
        if deadline is None or fifo is None
        else (deadline / fifo if fifo > 0 else float("inf"))
    )
    return {
        "goodput_over_saturation": None if share is None else round(share, 3),
        "share_passed": None if share is None else share >= GOODPUT_SHARE_OF_SATURATION,
        "deadline_over_fifo": None if ratio is None else round(ratio, 3),
        "ratio_passed": None if ratio is None else ratio >= GOODPUT_OVER_FIFO,
    }


def batch_stats(drive: DeadlineDrive) -> dict:
    sizes = [
        r.result.batch_size for r in drive.received.values() if r.result.status == Status.SUCCEEDED
    ]
    return {"mean_batch": round(float(np.mean(sizes)), 2) if sizes else None}


def bench_deadlines(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    max_batch_size: int,
    concurrency: int,
    threads: int | None,
    out_dir: Path,
    floor: dict,
    compute: dict,
    seconds: float = 20.0,
    modes: Sequence[str] = MODES,
    wait_s: float = 60.0,
    tight_share: float = TIGHT_SHARE,
) -> dict:
    """A worker per scheduling mode: its closed-loop saturation, then ``seconds`` of open loop at
    ``OVERLOAD`` x the first worker's saturation (same rate, same mix, same budgets for all)."""
    budgets = deadline_budgets(compute["p50_ms"], floor["p50_ms"])
    saturation = None
    runs: dict[str, dict] = {}
    for mode in modes:
        with bench_worker(
            kafka,
            redis_url,
            repository,
            max_batch_size,
            threads,
            out_dir,
            env={"STREAMINFER_WORKER_SCHEDULING": mode},
        ) as workers:
            asyncio.run(
                drive_kafka(kafka, workers.prefix, texts[:50], concurrency, f"warm-up ({mode})")
            )
            # every worker's own saturation, so that a box whose speed drifts between the runs shows
            # it; the offered rate is the first one's, the same for every mode
            closed = asyncio.run(
                drive_kafka(
                    kafka, workers.prefix, texts, concurrency, f"saturation (closed loop, {mode})"
                )
            )
            here = closed.figures(f"closed loop, {concurrency} in flight", max_batch_size)
            saturation = saturation or here
            rate = OVERLOAD * saturation.throughput
            classes = deadline_mix(max(1, round(rate * seconds)), tight_share)
            drive = asyncio.run(
                drive_deadlines(
                    kafka,
                    workers.prefix,
                    texts,
                    rate,
                    seconds,
                    classes,
                    budgets,
                    f"deadlines {mode} {rate:.0f}/s",
                    wait_s,
                )
            )
        # other processes on the box show in the load average (the bench itself adds ~2)
        runs[mode] = {
            "offered_rps": round(rate, 2),
            "saturation_here": here.throughput,
            **account(drive),
            **batch_stats(drive),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    target = check_deadline_targets(
        saturation.throughput, {m: r["goodput_per_s"] for m, r in runs.items()}
    )
    return {
        "saturation": asdict(saturation),
        "floor": floor,
        "compute": compute,
        "budgets_ms": budgets,
        "overload": OVERLOAD,
        "tight_share": tight_share,
        "runs": runs,
        "target": target,
        "goodput_ceiling_if_tight_all_missed": round((1 - tight_share) * OVERLOAD, 3),
    }


def _pct(share: float | None) -> str:
    return "" if share is None else f"{share:.1%}"


def deadlines_summary(report: dict) -> str:
    """The ``deadlines`` section of the printed report."""
    sat, budgets, target = (
        report["saturation"]["throughput"],
        report["budgets_ms"],
        report["target"],
    )
    lines = [
        f"saturation (closed loop): {sat:.1f} items/s; offered {report['overload']}x; deadlines: tight "
        f"{budgets['tight']:.0f} ms (= {TIGHT_COMPUTES} x batch-1 compute {report['compute']['p50_ms']:.1f}"
        f" + transport floor p50 {report['floor']['p50_ms']:.1f}), loose {budgets['loose']:.0f} ms; "
        f"{report['tight_share']:.0%} tight",
        "| scheduling | its own saturation | offered req/s | sent | accounted | goodput /s | goodput / saturation | on time tight |"
        " on time loose | shed early | expired | succeeded late (of which late at the worker) | failed | missing |"
        " mean batch |",
        "|" + "---|" * 15,
    ]
    for mode, run in report["runs"].items():
        classes = run["classes"]
        lines.append(
            f"| {mode} | {run.get('saturation_here', '')} | {run['offered_rps']:.1f} | {run['sent']} | {run['accounted']} | {run['goodput_per_s']:.1f} | "
            f"{_pct(run['goodput_per_s'] / sat if sat else None)} | "
            f"{_pct(classes.get('tight', {}).get('on_time_share'))} | "
            f"{_pct(classes.get('loose', {}).get('on_time_share'))} | {run['shed_early']} | {run['expired_late']} | "
            f"{run['late_success']} ({run.get('late_at_worker', '')}) | {run['failed']} | {run['missing']} | {run['mean_batch']} |"
        )
    if "goodput_ceiling_if_tight_all_missed" in report:
        lines.append(
            f"(the loose class alone is {report['goodput_ceiling_if_tight_all_missed']:.0%} of saturation: "
            "above that, goodput needs tight requests on time)"
        )
    if target["share_passed"] is not None:
        lines.append(
            f"goodput (deadline) / saturation = {target['goodput_over_saturation']:.1%} >= "
            f"{GOODPUT_SHARE_OF_SATURATION:.0%}: {'PASS' if target['share_passed'] else 'FAIL'}"
        )
    if target["ratio_passed"] is not None:
        lines.append(
            f"goodput deadline / fifo = {target['deadline_over_fifo']:.2f}x >= {GOODPUT_OVER_FIFO}x: "
            f"{'PASS' if target['ratio_passed'] else 'FAIL'}"
        )
    return "\n".join(lines)
