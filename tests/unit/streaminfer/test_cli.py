"""``streaminfer submit --collection --item-id --similar-k``: they reach the gateway as the
request's parameters, with the rest of the body's."""

from __future__ import annotations

import json

import httpx
import pytest

import streaminfer.client as client_package
from streaminfer import cli
from streaminfer.client import Client


def submit(monkeypatch, capsys, *argv: str) -> tuple[int, list[dict]]:
    sent = []

    def gateway(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/tasks":
            return httpx.Response(200, json={"tasks": []})
        sent.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "request_id": "r",
                "task": "text-embedding",
                "status": "succeeded",
                "outputs": {"similar": [{"id": "a", "score": 0.9, "metadata": {}}]},
            },
        )

    class MockedClient(Client):
        def __init__(self, base_url: str, **options) -> None:
            super().__init__(base_url, transport=httpx.MockTransport(gateway), **options)

    monkeypatch.setattr(client_package, "Client", MockedClient)
    with pytest.raises(SystemExit) as exited:
        cli.main(["submit", "text-embedding", *argv, "--url", "http://gateway.test"])
    out, _ = capsys.readouterr()
    if exited.value.code == 0:
        assert json.loads(out)["outputs"]["similar"][0]["id"] == "a"
    return exited.value.code, sent


def test_collection_flags_become_parameters(monkeypatch, capsys) -> None:
    code, sent = submit(
        monkeypatch,
        capsys,
        "--text",
        "hello",
        "--collection",
        "songs",
        "--item-id",
        "t1",
        "--similar-k",
        "5",
    )
    assert code == 0
    assert sent[0]["parameters"] == {"collection": "songs", "item_id": "t1", "similar_k": "5"}


def test_collection_flags_join_the_parameters_of_a_json_body(monkeypatch, capsys) -> None:
    body = json.dumps({"inputs": {"text": "hi"}, "parameters": {"cache": "false"}})
    code, sent = submit(
        monkeypatch, capsys, "--json", body, "--collection", "songs", "--similar-k", "3"
    )
    assert code == 0
    assert sent[0]["parameters"] == {"cache": "false", "collection": "songs", "similar_k": "3"}
