"""The deadline of a request through the gateway: its own ``deadline_ms`` wins; without one, its
task's ``model.yaml`` ``default_deadline_ms``, else STREAMINFER_DEFAULT_DEADLINE_MS, else none."""

from __future__ import annotations

import pydantic
import pytest
import yaml
from helpers.http import assert_error

from streaminfer.gateway.app import build_service
from streaminfer.gateway.service import InferenceService
from streaminfer.models.config import MAX_DEADLINE_MS
from streaminfer.settings import Settings

BODY = {"inputs": {"x": [1, 2, 3]}}


def with_model_default(repository, default_ms) -> None:
    path = repository / "tiny" / "model.yaml"
    path.write_text(
        yaml.safe_dump({**yaml.safe_load(path.read_text()), "default_deadline_ms": default_ms})
    )


def serve(gateway, repository, default_deadline_ms=None) -> None:
    gateway.app.state.service = InferenceService(
        gateway.producer,
        gateway.store,
        repository,
        "unit",
        max_wait_s=2,
        default_deadline_ms=default_deadline_ms,
    )


def submitted(gateway, body=BODY):
    response = gateway.post("/v1/infer/tiny", json=body)
    assert response.status_code == 202, response.text
    request, _ = gateway.producer.sent[-1]
    return request


def test_none_when_neither_the_model_nor_the_setting_has_one(gateway, repository):
    serve(gateway, repository)
    assert submitted(gateway).deadline_at is None


def test_the_setting_when_the_model_has_none(gateway, repository):
    serve(gateway, repository, default_deadline_ms=1500)
    request = submitted(gateway)
    assert request.deadline_at - request.created_at == 1500


def test_the_model_default_over_the_setting(gateway, repository):
    with_model_default(repository, 250)
    serve(gateway, repository, default_deadline_ms=1500)
    request = submitted(gateway)
    assert request.deadline_at - request.created_at == 250


def test_the_model_default_without_a_setting(gateway, repository):
    with_model_default(repository, 1)  # the smallest there is
    serve(gateway, repository)
    request = submitted(gateway)
    assert request.deadline_at - request.created_at == 1


@pytest.mark.parametrize("own", [1, 99, MAX_DEADLINE_MS])
def test_a_requests_own_deadline_wins_over_both(gateway, repository, own):
    with_model_default(repository, 250)
    serve(gateway, repository, default_deadline_ms=1500)
    request = submitted(gateway, {**BODY, "deadline_ms": own})
    assert request.deadline_at - request.created_at == own


@pytest.mark.parametrize("own", [0, -1, MAX_DEADLINE_MS + 1, 10**30])
def test_a_bad_own_deadline_is_refused_not_replaced_by_a_default(gateway, repository, own):
    with_model_default(repository, 250)
    serve(gateway, repository, default_deadline_ms=1500)
    assert_error(
        gateway.post("/v1/infer/tiny", json={**BODY, "deadline_ms": own}), 422, "INVALID_REQUEST"
    )
    assert gateway.producer.sent == []


@pytest.mark.parametrize("own", ["soon", 1.5, [1], {"ms": 1}])
def test_a_deadline_of_the_wrong_type_is_refused(gateway, repository, own):
    serve(gateway, repository, default_deadline_ms=1500)
    assert_error(
        gateway.post("/v1/infer/tiny", json={**BODY, "deadline_ms": own}), 422, "INVALID_REQUEST"
    )
    assert gateway.producer.sent == []


def test_an_explicit_null_deadline_takes_the_default(gateway, repository):
    serve(gateway, repository, default_deadline_ms=1500)
    request = submitted(gateway, {**BODY, "deadline_ms": None})
    assert request.deadline_at - request.created_at == 1500


@pytest.mark.parametrize("bad", [0, -5, MAX_DEADLINE_MS + 1])
def test_a_hostile_setting_is_refused_at_construction(gateway, repository, bad):
    with pytest.raises(ValueError, match="default_deadline_ms"):
        InferenceService(
            gateway.producer,
            gateway.store,
            repository,
            "unit",
            max_wait_s=2,
            default_deadline_ms=bad,
        )


@pytest.mark.parametrize("bad", ["0", "-1", str(MAX_DEADLINE_MS + 1), "soon"])
def test_a_hostile_environment_value_is_refused_by_the_settings(monkeypatch, bad):
    monkeypatch.setenv("STREAMINFER_DEFAULT_DEADLINE_MS", bad)
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_the_setting_reaches_the_service_the_app_builds(gateway, monkeypatch, repository):
    def built():
        return build_service(Settings(model_repository=repository), gateway.producer, gateway.store)

    monkeypatch.setenv("STREAMINFER_DEFAULT_DEADLINE_MS", "750")
    service = built()
    assert service.default_deadline_ms == 750
    assert service.deadline_default(service.config("tiny")) == 750
    with_model_default(repository, 40)
    service.refresh_tasks()  # a model.yaml default read on hot reload wins from then on
    assert service.deadline_default(service.config("tiny")) == 40
    monkeypatch.delenv("STREAMINFER_DEFAULT_DEADLINE_MS")
    assert built().default_deadline_ms is None
