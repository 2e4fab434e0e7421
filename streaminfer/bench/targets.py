"""The targets of issues 6 and 12 against a run's figures, and the Avro codec figure they include."""

from __future__ import annotations

import time
from io import BytesIO

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import InferenceRequest

from .codec import codec_roundtrips_per_second, typical_request
from .figures import Figures

KAFKA_SHARE_OF_RAW = 0.85
GATEWAY_SUBMITS_PER_S = 3000
CODEC_ROUNDTRIPS_PER_S = 50_000


def fastavro_roundtrips_per_second(n: int = 5000) -> float:
    """The same round trip with fastavro's generic writer and reader (body only, no framing)."""
    codec = AvroCodec()
    schema = parse_schema(codec.schema(InferenceRequest))
    record = typical_request().to_avro()
    started = time.perf_counter()
    for _ in range(n):
        out = BytesIO()
        schemaless_writer(out, schema, record)
        out.seek(0)
        schemaless_reader(out, schema)
    return n / (time.perf_counter() - started)


def bench_codec(repeats: int = 5) -> dict:
    """Best and median of ``repeats`` timings each: on a shared VM one timing can be half another."""
    ours = sorted(codec_roundtrips_per_second() for _ in range(repeats))
    theirs = sorted(fastavro_roundtrips_per_second() for _ in range(repeats))
    return {
        "roundtrips_per_s": round(ours[-1]),
        "median_roundtrips_per_s": round(ours[len(ours) // 2]),
        "fastavro_roundtrips_per_s": round(theirs[-1]),
    }


def check_targets(report: dict, rows: list[Figures]) -> list[dict]:
    """One row per target the run measured: what, the bound, the measured figure, pass/fail."""
    targets = []
    raw = next((r for r in rows if r.scenario.startswith("raw") and r.max_batch_size > 1), None)
    kafka = next((r for r in rows if r.scenario.startswith("kafka, batching on")), None)
    if raw and kafka:
        share = kafka.throughput / raw.throughput
        targets.append(
            {
                "target": f"Kafka end to end >= {KAFKA_SHARE_OF_RAW:.0%} of raw ONNX Runtime",
                "measured": f"{share:.0%} ({kafka.throughput:.1f} / {raw.throughput:.1f} items/s)",
                "passed": share >= KAFKA_SHARE_OF_RAW,
            }
        )
    load = report.get("load") or {}
    if load.get("target"):
        t = load["target"]
        targets.append(
            {
                "target": "p99 at 50% load <= 2 x full batch compute + 25 ms",
                "measured": f"p99 {t['p99_ms']:.0f} ms, bound {t['bound_ms']:.0f} ms",
                "passed": t["passed"],
            }
        )
    targets += issue12_targets(report)
    if "gateway_submit" in report:
        rate = report["gateway_submit"]["requests_per_s"]
        targets.append(
            {
                "target": f"gateway async submit >= {GATEWAY_SUBMITS_PER_S:,} req/s, one process",
                "measured": f"{rate:,.0f} req/s",
                "passed": rate >= GATEWAY_SUBMITS_PER_S,
            }
        )
    if "codec" in report:
        rate = report["codec"]["roundtrips_per_s"]
        targets.append(
            {
                "target": f"Avro encode + decode >= {CODEC_ROUNDTRIPS_PER_S:,}/s",
                "measured": f"{rate:,}/s",
                "passed": rate >= CODEC_ROUNDTRIPS_PER_S,
            }
        )
    return targets


def issue12_targets(report: dict) -> list[dict]:
    """The deadlines, light-load and sustained-load targets of issue 12 the run measured."""
    targets = []
    deadlines = (report.get("deadlines") or {}).get("target") or {}
    if deadlines.get("share_passed") is not None:
        targets.append(
            {
                "target": "goodput at 1.5x overload (deadline scheduling) >= 90% of closed-loop saturation",
                "measured": f"{deadlines['goodput_over_saturation']:.1%}",
                "passed": deadlines["share_passed"],
            }
        )
    if deadlines.get("ratio_passed") is not None:
        targets.append(
            {
                "target": "goodput deadline scheduling >= 1.5x FIFO",
                "measured": f"{deadlines['deadline_over_fifo']:.2f}x",
                "passed": deadlines["ratio_passed"],
            }
        )
    light = (report.get("light") or {}).get("target")
    if light:
        targets.append(
            {
                "target": "p50 at 5% load <= transport floor + batch-1 compute + 5 ms",
                "measured": f"p50 {light['p50_ms']:.1f} ms, bound {light['bound_ms']:.1f} ms",
                "passed": light["passed"],
            }
        )
    sustained = (report.get("load") or {}).get("sustained")
    if sustained:
        targets.append(
            {
                "target": f"open loop at {sustained['fraction']:.0%} of saturation: achieved >= 98% of "
                "offered, p99 <= 2 x full batch + 25 ms",
                "measured": f"{sustained['achieved_share']:.1%}, p99 {sustained['p99_ms']:.0f} ms "
                f"(bound {sustained['bound_ms']:.0f})",
                "passed": sustained["passed"],
            }
        )
    return targets


def targets_table(targets: list[dict]) -> str:
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [
        f"| {t['target']} | {t['measured']} | {'PASS' if t['passed'] else 'FAIL'} |"
        for t in targets
    ]
    return "\n".join(lines)
