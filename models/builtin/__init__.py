"""Builders of the built-in tasks and their committed ``model.yaml`` templates.

``build_all`` writes ``<repo>/<task>/model.yaml`` and ``<repo>/<task>/1/<artifact>`` plus a
``metrics.json``. Builders import torch, transformers and scikit-learn lazily, so importing this
package (e.g. for ``default_repository``) stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from streaminfer.models.errors import MissingDependency, ModelNotFound

__all__ = [
    "BUILTIN_TASKS",
    "VERSION",
    "build_all",
    "build_task",
    "check_build_dependencies",
    "default_repository",
    "is_built",
    "template_path",
]

logger = logging.getLogger(__name__)

VERSION = "1"
METRICS_FILE = "metrics.json"
BUILTIN_TASKS: dict[str, str] = {
    "text-embedding": "streaminfer.models.builtin.text_embedding",
    "image-classify": "streaminfer.models.builtin.image_classify",
    "tabular-classify": "streaminfer.models.builtin.tabular_classify",
    "face-detect": "streaminfer.models.builtin.face_detect",
}
_TEMPLATES = Path(__file__).resolve().parent / "templates"


def default_repository() -> Path:
    """Where models are built and served from unless told otherwise: ``model_repository/`` at
    the root of a source checkout (gitignored), else the per-user data directory (installed from
    a wheel, the package folder is site-packages, which is neither the user's nor writable)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "models" / "builtin").is_dir():
        return root / "model_repository"
    import platformdirs

    return platformdirs.user_data_path("streaminfer") / "model_repository"


def check_build_dependencies(tasks: list[str]) -> None:
    """Raise ``MissingDependency`` naming the install command when a builder's packages are
    absent: before minutes of building, and in one line instead of an ImportError traceback."""
    for task in tasks:
        for module, install in _builder(task).REQUIRES.items():
            if importlib.util.find_spec(module) is None:
                raise MissingDependency(
                    f"building {task} needs the Python package {module!r}; install it with: {install}"
                )


def template_path(task: str) -> Path:
    """The committed ``model.yaml`` of a built-in task."""
    return _TEMPLATES / f"{task}.yaml"


def _builder(task: str):
    if task not in BUILTIN_TASKS:
        raise ModelNotFound(f"no built-in task {task!r}; built-ins are {sorted(BUILTIN_TASKS)}")
    return importlib.import_module(BUILTIN_TASKS[task])


def is_built(repo: Path, task: str) -> bool:
    """Whether ``task`` has its model.yaml, artifact and metrics in ``repo``, built by the recipe
    of this code (a checkout that pulled a changed builder or template rebuilds that task)."""
    version_dir = Path(repo) / task / VERSION
    if not (
        (Path(repo) / task / "model.yaml").is_file()
        and (version_dir / _builder(task).ARTIFACT).is_file()
        and (version_dir / METRICS_FILE).is_file()
    ):
        return False
    try:
        built = json.loads((version_dir / METRICS_FILE).read_text(encoding="utf-8"))
    except ValueError:
        return False
    return built.get("recipe_sha256") == recipe_digest(task)


def recipe_digest(task: str) -> str:
    """SHA-256 of what a built task comes from: its builder module and its model.yaml template."""
    digest = hashlib.sha256(Path(inspect.getsourcefile(_builder(task))).read_bytes())
    digest.update(template_path(task).read_bytes())
    return digest.hexdigest()


def build_task(repo: Path, task: str, force: bool = False) -> dict:
    """Build one built-in task into ``repo`` unless it is already built; returns its metrics.

    The version directory is assembled under a temporary name and renamed into place, so a
    crashed build never leaves a half-written version that a worker would try to serve.
    """
    repo = Path(repo)
    builder = _builder(task)
    model_dir = repo / task
    version_dir = model_dir / VERSION
    if not force and is_built(repo, task):
        metrics = json.loads((version_dir / METRICS_FILE).read_text(encoding="utf-8"))
        logger.info("%s is already built in %s; skipping (use force to rebuild)", task, model_dir)
        return {**metrics, "skipped": True}

    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{VERSION}.building-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; served models must be readable
    started = time.perf_counter()
    try:
        metrics = builder.build(staging)
        metrics["build_seconds"] = round(time.perf_counter() - started, 2)
        metrics["recipe_sha256"] = recipe_digest(task)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if version_dir.exists():
            shutil.rmtree(version_dir)
        os.replace(staging, version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _install_template(task, model_dir)
    _smoke_test(model_dir)
    return {**metrics, "skipped": False}


def _install_template(task: str, model_dir: Path) -> None:
    target = model_dir / "model.yaml"
    partial = model_dir / ".model.yaml.partial"
    shutil.copyfile(template_path(task), partial)
    os.replace(partial, target)


def _smoke_test(model_dir: Path) -> None:
    """Load the installed model through its runtime, exactly as a worker would, and warm it up."""
    from streaminfer.models.config import load_model_config
    from streaminfer.models.repository import create_model

    model = create_model(load_model_config(model_dir), VERSION, device="cpu")
    model.load()
    model.warmup()


def build_all(repo: Path, force: bool = False, tasks: list[str] | None = None) -> dict[str, dict]:
    """Build the built-in tasks (default: all) into ``repo``; returns metrics per task."""
    repo = Path(repo)
    selected = list(BUILTIN_TASKS) if tasks is None else list(tasks)
    check_build_dependencies(selected)  # and unknown names: before minutes on the others
    repo.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    progress = tqdm(selected, desc="building models", unit="model")
    for task in progress:
        progress.set_postfix_str(task)
        results[task] = build_task(repo, task, force=force)
    return results
