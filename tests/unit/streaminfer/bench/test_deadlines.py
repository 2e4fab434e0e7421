"""The pure pieces of ``bench --scenario deadlines``, ``light`` and the sustained ``load`` target:
the tight/loose mix, each request's outcome, goodput accounting and the PASS/FAIL checks."""

from __future__ import annotations

import pytest

from streaminfer.bench.deadlines import (
    account,
    check_deadline_targets,
    deadline_budgets,
    deadline_mix,
    deadlines_summary,
    outcome,
)
from streaminfer.bench.figures import Figures, LoadPoint
from streaminfer.bench.floor import check_light, floor_repository, no_model_onnx
from streaminfer.bench.kafka_load import DeadlineDrive, Received
from streaminfer.bench.load import achieved_rate, check_sustained
from streaminfer.bench.targets import check_targets
from streaminfer.schemas.records import Error, InferenceResult, Status


def result(status: Status, code: str | None = None) -> InferenceResult:
    return InferenceResult(
        request_id="r",
        task="text-embedding",
        status=status,
        worker_id="w",
        error=None if code is None else Error(code, "why"),
        batch_size=1,
    )


# --- the mix and the budgets ---


def test_the_mix_has_the_tight_share_in_a_seeded_shuffled_order():
    classes = deadline_mix(1000, tight_share=0.3, seed=5)
    assert len(classes) == 1000
    assert classes.count("tight") == 300 and classes.count("loose") == 700
    assert classes == deadline_mix(1000, tight_share=0.3, seed=5)
    assert classes[:300] != ["tight"] * 300  # not in runs
    assert max(len(run) for run in "".join(c[0] for c in classes).replace("l", " ").split()) < 20


def test_the_default_mix_is_half_and_half():
    classes = deadline_mix(31)
    assert classes.count("tight") in (15, 16)


def test_tight_budget_is_four_computes_plus_the_floor_and_loose_two_seconds():
    assert deadline_budgets(compute_p50_ms=12.0, floor_p50_ms=40.0) == {
        "tight": 88.0,
        "loose": 2000.0,
    }


# --- one request's outcome ---


@pytest.mark.parametrize(
    ("status", "code", "arrival", "expected"),
    [
        (Status.SUCCEEDED, None, 1000, "on_time"),
        (Status.SUCCEEDED, None, 1001, "late_success"),
        (Status.EXPIRED, "DEADLINE_UNREACHABLE", 900, "shed_early"),
        (Status.EXPIRED, "DEADLINE_EXCEEDED", 1200, "expired_late"),
        (Status.FAILED, "INFERENCE_FAILED", 900, "failed"),
        (Status.EXPIRED, None, 900, "failed"),
    ],
)
def test_each_result_is_judged_against_its_deadline_at_the_consumer(
    status, code, arrival, expected
):
    assert outcome(Received(result(status, code), arrival), deadline_at_ms=1000) == expected


def test_no_result_is_missing():
    assert outcome(None, 1000) == "missing"


# --- goodput accounting ---


def drive_of(
    rows: list[tuple[str, int, tuple[Status, str | None, int] | None]],
    offered_s: float = 10.0,
    started_ms: float = 0.0,
) -> DeadlineDrive:
    drive = DeadlineDrive(started_ms=started_ms, offered_s=offered_s)
    for n, (kind, deadline, got) in enumerate(rows):
        request_id = f"r{n}"
        drive.sent[request_id] = kind
        drive.deadlines_ms[request_id] = deadline
        if got is not None:
            status, code, arrival = got
            drive.received[request_id] = Received(result(status, code), arrival)
    return drive


def test_every_sent_request_is_accounted_for_and_goodput_counts_only_on_time_successes():
    rows = (
        [("tight", 100, (Status.SUCCEEDED, None, 90))] * 6
        + [("tight", 100, (Status.SUCCEEDED, None, 150))] * 2
        + [("tight", 100, (Status.EXPIRED, "DEADLINE_UNREACHABLE", 20))] * 3
        + [("loose", 2000, (Status.SUCCEEDED, None, 1500))] * 10
        + [("loose", 2000, (Status.EXPIRED, "DEADLINE_EXCEEDED", 2500))] * 4
        + [("loose", 2000, None)]
    )
    found = account(drive_of(rows, offered_s=4.0))
    assert found["sent"] == 26 and found["accounted"] == 25 and found["missing"] == 1
    assert (
        sum(
            found[o]
            for o in ("on_time", "late_success", "shed_early", "expired_late", "failed", "missing")
        )
        == 26
    )
    assert (
        found["on_time"],
        found["late_success"],
        found["shed_early"],
        found["expired_late"],
    ) == (16, 2, 3, 4)
    assert found["goodput_per_s"] == pytest.approx(16 / 4.0)
    assert found["classes"]["tight"]["on_time_share"] == pytest.approx(6 / 11, abs=1e-4)
    assert found["classes"]["loose"]["on_time_share"] == pytest.approx(10 / 15, abs=1e-4)
    assert found["classes"]["tight"]["sent"] == 11 and found["classes"]["loose"]["missing"] == 1


def test_a_late_success_is_split_by_whether_the_worker_finished_it_in_time():
    drive = drive_of([("tight", 100, (Status.SUCCEEDED, None, 150))] * 2)
    drive.received["r0"].result.completed_at = 90  # done in time, late on the way to the consumer
    drive.received["r1"].result.completed_at = 120  # already late at the worker
    found = account(drive)
    assert found["late_success"] == 2 and found["late_at_worker"] == 1


def test_goodput_runs_to_the_last_on_time_result_when_that_is_after_the_offered_schedule():
    rows = [("loose", 20_000, (Status.SUCCEEDED, None, 8_000))] * 10 + [
        ("loose", 100, (Status.SUCCEEDED, None, 9_000))
    ]
    found = account(drive_of(rows, offered_s=4.0, started_ms=0.0))
    assert found["seconds"] == pytest.approx(8.0)  # the late success does not stretch the run
    assert found["goodput_per_s"] == pytest.approx(10 / 8.0)


def test_nothing_on_time_is_zero_goodput():
    found = account(
        drive_of([("tight", 10, (Status.EXPIRED, "DEADLINE_EXCEEDED", 50))] * 3, offered_s=1.0)
    )
    assert found["goodput_per_s"] == 0.0 and found["on_time_share"] == 0.0


# --- PASS / FAIL ---


@pytest.mark.parametrize(
    ("deadline", "fifo", "share_ok", "ratio_ok"),
    [
        (95.0, 50.0, True, True),
        (90.0, 60.0, True, True),  # exactly 90 % and exactly 1.5x
        (89.9, 40.0, False, True),
        (95.0, 70.0, True, False),
        (95.0, 0.0, True, True),  # FIFO delivered nothing on time
    ],
)
def test_deadline_targets(deadline, fifo, share_ok, ratio_ok):
    target = check_deadline_targets(100.0, {"deadline": deadline, "fifo": fifo})
    assert target["share_passed"] is share_ok
    assert target["ratio_passed"] is ratio_ok


def test_deadline_targets_without_a_fifo_run_judge_only_the_share():
    target = check_deadline_targets(100.0, {"deadline": 95.0})
    assert target["share_passed"] is True and target["ratio_passed"] is None


def deadlines_report(deadline: float, fifo: float) -> dict:
    runs = {
        mode: account(
            drive_of([("tight", 100, (Status.SUCCEEDED, None, 50))] * round(g), offered_s=1.0)
        )
        for mode, g in (("deadline", deadline), ("fifo", fifo))
    }
    for run in runs.values():
        run.update(offered_rps=150.0, mean_batch=2.0)
    return {
        "saturation": {"throughput": 100.0},
        "budgets_ms": {"tight": 88.0, "loose": 2000.0},
        "overload": 1.5,
        "tight_share": 0.5,
        "compute": {"p50_ms": 12.0},
        "floor": {"p50_ms": 40.0},
        "runs": runs,
        "target": check_deadline_targets(100.0, {m: r["goodput_per_s"] for m, r in runs.items()}),
    }


def test_the_deadlines_summary_prints_both_runs_and_both_verdicts():
    text = deadlines_summary(deadlines_report(95, 50))
    assert "| deadline |" in text and "| fifo |" in text
    assert "95.0% >= 90%: PASS" in text and "1.90x >= 1.5x: PASS" in text
    assert "FAIL" in deadlines_summary(deadlines_report(80, 70))


def test_light_target_is_floor_plus_compute_plus_five_ms():
    assert check_light(54.9, floor_p50_ms=40.0, compute_p50_ms=10.0)["passed"] is True
    assert check_light(55.0, floor_p50_ms=40.0, compute_p50_ms=10.0)["passed"] is True
    failed = check_light(56.0, floor_p50_ms=40.0, compute_p50_ms=10.0)
    assert (
        failed["passed"] is False
        and failed["bound_ms"] == 55.0
        and failed["over_floor_plus_compute_ms"] == 6.0
    )


def load_point(
    fraction: float, items: int, offered: float, achieved: float | None, p99: float
) -> LoadPoint:
    return LoadPoint(
        fraction,
        offered,
        Figures("open", 32, items, items / offered, offered, 1.0, 2.0, p99, p99),
        achieved,
    )


@pytest.mark.parametrize(
    ("achieved", "p99", "passed"),
    [(84.0, 900.0, True), (83.4, 1025.0, True), (83.0, 900.0, False), (84.9, 1026.0, False)],
)
def test_sustained_target_at_85_percent(achieved, p99, passed):
    points = [load_point(0.5, 1000, 50.0, 50.0, 100.0), load_point(0.85, 1700, 85.0, achieved, p99)]
    target = check_sustained(points, full_batch_ms=500.0)
    assert target["fraction"] == 0.85 and target["bound_ms"] == 1025.0
    assert target["passed"] is passed


def test_sustained_target_needs_20_seconds_at_85_percent_or_more():
    assert (
        check_sustained([load_point(0.85, 1000, 85.0, 85.0, 10.0)], full_batch_ms=500.0) is None
    )  # 11.8 s
    assert check_sustained([load_point(0.75, 2000, 75.0, 75.0, 10.0)], full_batch_ms=500.0) is None
    target = check_sustained([load_point(0.9, 2000, 90.0, 90.0, 10.0)], full_batch_ms=500.0)
    assert target["fraction"] == 0.9 and target["passed"] is True
    assert check_sustained([load_point(0.85, 2000, 85.0, 85.0, 10.0)], full_batch_ms=None) is None


def test_a_20_second_point_whose_rate_was_rounded_up_still_counts():
    target = check_sustained(
        [load_point(0.85, 1659, 83.0, 83.0, 10.0)], full_batch_ms=500.0
    )  # 19.99 s
    assert target is not None and target["passed"] is True


def test_achieved_rate_spans_first_to_last_arrival():
    assert achieved_rate([0.5 + i / 10 for i in range(101)]) == pytest.approx(10.0)
    assert achieved_rate([1.0]) is None


def test_issue_12_targets_join_the_targets_table():
    report = {
        "deadlines": deadlines_report(95, 70),
        "light": {"target": check_light(60.0, 40.0, 10.0)},
        "load": {"sustained": check_sustained([load_point(0.85, 1700, 85.0, 84.0, 900.0)], 500.0)},
    }
    verdicts = [(t["target"].split(" ")[0], t["passed"]) for t in check_targets(report, [])]
    assert verdicts == [("goodput", True), ("goodput", False), ("p50", False), ("open", True)]


def test_the_floor_model_has_the_text_embedding_signature_and_returns_zeros(tmp_path):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(no_model_onnx(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"text": np.array(["a", "bb", "ccc"], dtype=object)})
    assert out.shape == (3, 384) and out.dtype == np.float32 and not out.any()
    source = tmp_path / "source" / "text-embedding"
    source.mkdir(parents=True)
    (source / "model.yaml").write_text(
        "name: m\ntask: text-embedding\nmax_batch_size: 32\n"
        "preprocess: {kind: tokenize}\nartifact: other.onnx\n"
    )
    repo = floor_repository(tmp_path / "source", tmp_path / "floor")
    import yaml

    config = yaml.safe_load((repo / "text-embedding" / "model.yaml").read_text())
    assert (
        "preprocess" not in config
        and config["artifact"] == "model.onnx"
        and config["max_batch_size"] == 32
    )
    assert (repo / "text-embedding" / "1" / "model.onnx").stat().st_size > 0
