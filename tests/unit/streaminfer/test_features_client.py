"""streaminfer.client reads the result of a feature lookup request: the lookup's timings, one of
them text (``feature_source``), do not make the body unreadable."""

from __future__ import annotations

from streaminfer.client.results import Result


def test_a_result_with_lookup_timings_is_read() -> None:
    body = {
        "request_id": "r",
        "task": "tabular-classify",
        "status": "succeeded",
        "model": {"name": "m", "version": "1"},
        "outputs": {"label": 0, "probability": 0.25},
        "timings": {
            "queued_ms": 1.0,
            "inference_ms": 0.5,
            "total_ms": 2.0,
            "feature_lookup_ms": 0.4,
            "feature_source": "cache",
        },
        "batch_size": 1,
        "attempts": 1,
        "error": None,
    }
    result = Result.from_body(body)
    assert result.succeeded and result.timings["feature_lookup_ms"] == 0.4
    assert (
        "feature_source" not in result.timings
        and result.raw["timings"]["feature_source"] == "cache"
    )


def test_request_producer_inputs_make_an_entity_tensor_the_worker_accepts(tmp_path) -> None:
    import shutil

    from streaminfer.client.request_events import input_tensor
    from streaminfer.models.builtin import template_path
    from streaminfer.models.config import load_model_config
    from streaminfer.models.validation import validate_tensors

    shutil.copyfile(template_path("tabular-classify"), tmp_path / "model.yaml")
    config = load_model_config(tmp_path)
    for value in ("0", ["0", "568"]):  # RequestProducer.send(task, {"entity_id": value})
        tensor = input_tensor("entity_id", value)
        assert tensor.datatype.value == "BYTES"
        validate_tensors(config, {"entity_id": tensor.to_numpy()})  # what intake checks
