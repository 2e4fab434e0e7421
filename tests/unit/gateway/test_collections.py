"""The collection routes over an in-memory store (the Redis one is tested end to end in
tests/integration/test_collections.py): status and error codes, the caller's namespace, text
embedded through the inference path, and the OpenAPI they publish."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.collections import MemoryCollections

from streaminfer.gateway.apikeys import SCOPES, Principal
from streaminfer.gateway.dependencies import caller


@pytest.fixture
def api(make_gateway):
    gateway = make_gateway(max_body_bytes=65536)
    gateway.app.state.collections = MemoryCollections()
    gateway.as_client = lambda name: gateway.app.dependency_overrides.__setitem__(
        caller, lambda: Principal(name, frozenset(SCOPES))
    )
    return gateway


def test_put_get_search_delete(api) -> None:
    assert api.put(
        "/v1/collections/songs/items/a", json={"embedding": [1, 0, 0], "metadata": {"g": "jazz"}}
    ).json() == {"collection": "songs", "id": "a", "dimension": 3}
    api.put(
        "/v1/collections/songs/items/b", json={"embedding": [1, 1, 0], "metadata": {"g": "rock"}}
    )
    api.put("/v1/collections/songs/items/c", json={"embedding": [0, 0, 1]})
    assert api.get("/v1/collections").json() == {
        "collections": [{"name": "songs", "count": 3, "dimension": 3}]
    }
    item = api.get("/v1/collections/songs/items/a").json()
    assert item == {"id": "a", "embedding": [1.0, 0.0, 0.0], "metadata": {"g": "jazz"}}
    matches = api.post(
        "/v1/collections/songs/search", json={"embedding": [1, 0.1, 0], "k": 2}
    ).json()["matches"]
    assert [m["id"] for m in matches] == ["a", "b"] and matches[0]["score"] > matches[1]["score"]
    rock = api.post(
        "/v1/collections/songs/search",
        json={"embedding": [1, 0, 0], "k": 5, "filter": {"g": "rock"}},
    )
    assert [m["id"] for m in rock.json()["matches"]] == ["b"]
    assert api.delete("/v1/collections/songs/items/a").json()["status"] == "deleted"
    gone = api.get("/v1/collections/songs/items/a")
    assert gone.status_code == 404 and gone.json()["error_code"] == "ITEM_NOT_FOUND"


def test_another_client_sees_nothing_and_gets_404_not_403(api) -> None:
    api.as_client("alice")
    api.put("/v1/collections/songs/items/a", json={"embedding": [1, 0]})
    api.as_client("bob")
    assert api.get("/v1/collections").json() == {"collections": []}
    for response in (
        api.get("/v1/collections/songs/items/a"),
        api.delete("/v1/collections/songs/items/a"),
        api.post("/v1/collections/songs/search", json={"embedding": [1, 0], "k": 1}),
    ):
        assert (
            response.status_code == 404 and response.json()["error_code"] == "COLLECTION_NOT_FOUND"
        )
    api.put("/v1/collections/songs/items/b", json={"embedding": [1, 0, 0]})  # his own, 3-d
    api.as_client("alice")
    assert api.get("/v1/collections").json()["collections"] == [
        {"name": "songs", "count": 1, "dimension": 2}
    ]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/v1/collections/s/items/a",
            {"embedding": [1, 0, 0, 0]},
            409,
            "COLLECTION_DIMENSION_MISMATCH",
        ),
        ("/v1/collections/s/items/a", {"embedding": [0, 0, 0]}, 422, "INVALID_REQUEST"),
        ("/v1/collections/s/items/a", {"embedding": []}, 422, "INVALID_REQUEST"),
        ("/v1/collections/s/items/a", {}, 422, "INVALID_REQUEST"),
        (
            "/v1/collections/s/items/a",
            {"embedding": [1, 0, 0], "text": "x"},
            422,
            "INVALID_REQUEST",
        ),
        (
            "/v1/collections/s/items/a",
            {"embedding": [1, 0, 0], "metadata": {"k": "v" * 5000}},
            422,
            "INVALID_REQUEST",
        ),
        ("/v1/collections/s/items/" + "a" * 257, {"embedding": [1, 0, 0]}, 422, "INVALID_REQUEST"),
        ("/v1/collections/S%20S/items/a", {"embedding": [1, 0, 0]}, 422, "INVALID_REQUEST"),
    ],
)
def test_hostile_puts(api, path, body, status, code) -> None:
    api.put("/v1/collections/s/items/first", json={"embedding": [1, 0, 0]})
    response = api.put(path, json=body)
    assert (response.status_code, response.json()["error_code"]) == (status, code)


def test_nan_and_k_bounds(api) -> None:
    api.put("/v1/collections/s/items/first", json={"embedding": [1, 0, 0]})
    nan = api.put(
        "/v1/collections/s/items/a",
        content=b'{"embedding": [NaN, 1, 0]}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422 and nan.json()["error_code"] == "INVALID_REQUEST"
    for k in (0, -3):
        bad = api.post("/v1/collections/s/search", json={"embedding": [1, 0, 0], "k": k})
        assert bad.status_code == 422
    capped = api.post("/v1/collections/s/search", json={"embedding": [1, 0, 0], "k": 10**9})
    assert [m["id"] for m in capped.json()["matches"]] == ["first"]
    missing = api.post("/v1/collections/none/search", json={"embedding": [1, 0, 0], "k": 1})
    assert missing.status_code == 404 and missing.json()["error_code"] == "COLLECTION_NOT_FOUND"


def test_text_is_embedded_through_the_inference_path(api, monkeypatch) -> None:
    asked = []

    async def embed(text, client_id):
        asked.append((text, client_id))
        return np.ones(4).tolist()

    monkeypatch.setattr(api.app.state.service, "embed", embed)
    api.as_client("alice")
    assert api.put("/v1/collections/t/items/a", json={"text": "hello"}).json()["dimension"] == 4
    assert (
        api.post("/v1/collections/t/search", json={"text": "hi", "k": 1}).json()["matches"][0]["id"]
        == "a"
    )
    assert asked == [("hello", "alice"), ("hi", "alice")]
    # searching a collection that does not exist costs no model call
    assert api.post("/v1/collections/none/search", json={"text": "hi", "k": 1}).status_code == 404
    assert len(asked) == 2


def test_infer_checks_collection_parameters(api) -> None:
    for parameters in (
        {"item_id": "x"},
        {"collection": "s"},
        {"collection": "s", "similar_k": 0},
        {"collection": "bad name", "item_id": "x"},
        {"collection": "s", "item_id": "a/b"},
    ):
        response = api.post(
            "/v1/infer/tiny", json={"inputs": {"x": [1, 2, 3]}, "parameters": parameters}
        )
        assert response.status_code == 422, parameters
    ok = api.post(
        "/v1/infer/tiny",
        json={
            "inputs": {"x": [1, 2, 3]},
            "parameters": {"collection": "s", "item_id": "a", "similar_k": 3},
        },
    )
    assert ok.status_code == 202, ok.text
    assert api.producer.sent[-1][0].parameters == {
        "collection": "s",
        "item_id": "a",
        "similar_k": "3",
    }


def test_openapi_documents_the_routes(api) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/v1/collections/{name}/items/{item_id}"]) == {"put", "get", "delete"}
    search = paths["/v1/collections/{name}/search"]["post"]
    assert search["summary"] and "404" in search["responses"]
    assert search["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Matches"
    )
    assert "get" in paths["/v1/collections"]
