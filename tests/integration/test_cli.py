"""The `streaminfer` CLI against the shared stack: submit, tail (decoded, filtered), models list,
config show."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def cli(stack, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streaminfer", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_submit_then_tail_results_and_audit_for_that_request(stack):
    submitted = cli(
        stack, "submit", "text-embedding", "--text", "from the cli", "--url", stack.gateway_url
    )
    assert submitted.returncode == 0, submitted.stderr
    body = json.loads(submitted.stdout)
    assert body["status"] == "succeeded" and len(body["outputs"]["embedding"]) == 384
    rid = body["request_id"]

    results = cli(
        stack,
        "tail",
        "results",
        "--task",
        "text-embedding",
        "--request-id",
        rid,
        "--from-beginning",
        "--max",
        "1",
        "--idle-timeout",
        "20",
    )
    assert results.returncode == 0, results.stderr
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert [r["request_id"] for r in lines] == [rid]
    assert lines[0]["status"] == "SUCCEEDED" and lines[0]["outputs"][0]["name"] == "embedding"

    audit = cli(
        stack, "tail", "audit", "--request-id", rid, "--from-beginning", "--idle-timeout", "3"
    )
    kinds = [json.loads(line)["type"] for line in audit.stdout.splitlines()]
    assert {"ACCEPTED", "STARTED", "SUCCEEDED"} <= set(kinds) and len(kinds) >= 3


def test_submit_reports_errors_with_a_nonzero_exit(stack):
    failed = cli(stack, "submit", "no-such-task", "--text", "x", "--url", stack.gateway_url)
    assert failed.returncode == 1 and json.loads(failed.stdout)["error_code"] == "TASK_NOT_FOUND"


def test_models_list_and_config_show(stack):
    listed = cli(stack, "models", "list")
    assert listed.returncode == 0
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert {"text-embedding", "image-classify", "tabular-classify"} <= set(rows)
    assert "onnxruntime" in rows["text-embedding"] and "torch" in rows["image-classify"]
    shown = json.loads(cli(stack, "config", "show").stdout)
    assert (
        shown["topic_prefix"] == stack.prefix
        and shown["kafka_bootstrap_servers"] == stack.bootstrap
    )
    assert "redis_url" in shown and "jwt_public_keys" not in shown


def test_keys_create_list_revoke(stack):
    created = cli(stack, "keys", "create", "--client", "cli-client", "--scopes", "inference:read")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("si_") and len(key) > 30
    listed = cli(stack, "keys", "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("cli-client"))
    assert "scopes=inference:read" in row and "keys=1" in row and key not in listed.stdout
    bad = cli(stack, "keys", "create", "--client", "x", "--scopes", "root")
    assert bad.returncode == 2 and "unknown scopes" in bad.stderr
    revoked = cli(stack, "keys", "revoke", "--client", "cli-client")
    assert "revoked 1" in revoked.stdout
    assert "cli-client" not in cli(stack, "keys", "list").stdout
