"""Feature lookup from a real Postgres (docker-compose's feature store), stopped and started under
a running worker: requests wait while it is down, never fail or get dead-lettered, and finish once
it is back. The Postgres server runs from the machine's binaries in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Stack

from integration.test_features import TASK, infer, private_repository, row
from streaminfer.embedded import free_port
from streaminfer.features import copy_table

pytestmark = pytest.mark.integration

PASSWORD = f"pw-{uuid.uuid4().hex}"


class Postgres:
    def __init__(self, root: Path) -> None:
        self.data, self.port = root / "data", free_port()
        self.url = f"postgresql+psycopg://streaminfer:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        # NOTE: Postgres refuses to run as root; as root the tests run it as the postgres user
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}"

    def init(self) -> None:
        pwfile = self.data.parent / "pw"
        pwfile.write_text(PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(self.data.parent, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "streaminfer",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
        )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.data.parent / "log"),
            "start",
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.data.parent}",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("no Postgres binaries (initdb, pg_ctl) on this machine")
    root = Path(tempfile.mkdtemp(prefix="streaminfer-pg-"))  # pytest's tmp dirs are private to root
    server = Postgres(root)
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(AssertionError):  # stopped already
            server._run("pg_ctl", "-D", str(server.data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


async def test_a_postgres_feature_store_stopped_and_started(
    kafka_server, redis_server, model_repository, postgres: Postgres, tmp_path: Path
) -> None:
    repo = private_repository(model_repository, tmp_path / "repo")
    rows = copy_table(
        f"sqlite:///{repo / TASK / '1' / 'features.sqlite'}",
        postgres.url,
        "features",
        "entity_id",
        list(row(0)),
    )
    assert rows == 569
    stack = Stack(kafka_server, redis_server, repo, STREAMINFER_FEATURE_STORE_URL=postgres.url)
    try:
        stack.add_worker()
        stack.add_gateway()
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=40) as client:
            first = await infer(client, {"entity_id": "0"})
            direct = await infer(client, {"features": row(0)})
            assert first["status"] == "succeeded" and first["timings"]["feature_source"] == "db", (
                first
            )
            assert first["outputs"] == direct["outputs"]
            unknown = await infer(client, {"entity_id": "99999"})
            assert unknown["error"]["code"] == "FEATURES_NOT_FOUND"

            postgres.stop()
            accepted = await client.post(f"/v1/infer/{TASK}", json={"inputs": {"entity_id": "5"}})
            request_id = accepted.json()["request_id"]
            held = await client.get(f"/v1/results/{request_id}", params={"wait": 4})
            assert held.json()["status"] in ("queued", "running"), (
                held.text
            )  # waits: no failure, no letter
            postgres.start()
            done = await client.get(f"/v1/results/{request_id}", params={"wait": 30})
            assert done.json()["status"] == "succeeded", done.text
            assert done.json()["outputs"] == (await infer(client, {"features": row(5)}))["outputs"]
        log = stack.worker_logs[0].read_text(errors="replace")
        assert "feature database did not answer" in log
        assert PASSWORD not in log  # the URL's password is never logged
    finally:
        stack.close()
