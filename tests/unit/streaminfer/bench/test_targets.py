"""The issue-6 targets table of ``streaminfer bench``: each target judged from the run's figures."""

from __future__ import annotations

from streaminfer.bench.figures import Figures
from streaminfer.bench.targets import check_targets, targets_table


def row(scenario: str, batch: int, throughput: float) -> Figures:
    return Figures(scenario, batch, 100, 1.0, throughput, 1.0, 2.0, 3.0, 4.0)


def test_each_measured_target_is_judged_against_its_bound():
    rows = [
        row("raw onnxruntime (batch 32)", 32, 100.0),
        row("raw onnxruntime (batch 1)", 1, 500.0),
        row("kafka, batching on (max 32)", 32, 86.0),
    ]
    report = {
        "load": {"target": {"p99_ms": 900.0, "bound_ms": 800.0, "passed": False}},
        "gateway_submit": {"requests_per_s": 3100.0},
        "codec": {"roundtrips_per_s": 49_999},
    }
    verdicts = {t["target"].split(" ")[0]: t["passed"] for t in check_targets(report, rows)}
    # the raw baseline is the one at the same max batch size (32), not the batch-1 row
    assert verdicts == {"Kafka": True, "p99": False, "gateway": True, "Avro": False}
    assert "| FAIL |" in targets_table(check_targets(report, rows))


def test_targets_not_measured_in_a_run_are_left_out():
    assert check_targets({}, [row("raw onnxruntime (batch 32)", 32, 100.0)]) == []
