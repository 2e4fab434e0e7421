"""Dependencies between packages run one way: shell -> gateway -> schemas; shell -> streams ->
schemas, models. schemas and models import nothing of ours; the gateway takes only the numpy-only
parts of models (so torch and onnxruntime stay out of its process)."""

from __future__ import annotations

import ast
from pathlib import Path

from streaminfer.schemas.codec import SCHEMA_DIR

ROOT = Path(__file__).resolve().parents[2]
OURS = {"schemas", "models", "streams", "gateway", "streaminfer"}
ALLOWED = {
    "schemas": set(),
    "models": set(),
    "streams": {"schemas", "models"},
    "gateway": {
        "schemas",
        "models.config",
        "models.friendly",
        "models.errors",
        "models.signature",
        "models.validation",
    },
    "streaminfer": OURS,
}


def imports_of(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {short for short in map(ours, found) if short and short.split(".")[0] != package}


def ours(module: str) -> str | None:
    """``streaminfer.models.config`` -> ``models.config``; the shell's own modules -> ``streaminfer``."""
    head, _, rest = module.partition(".")
    if head != "streaminfer":
        return None
    return rest if rest.split(".")[0] in OURS - {"streaminfer"} else "streaminfer." + rest


def allowed(package: str, module: str) -> bool:
    rules = ALLOWED[package]
    return any(
        module == rule
        or module.startswith(rule + ".")
        or rule == module.split(".")[0]
        and "." not in rule
        for rule in rules
    )


def test_dependencies_run_one_way():
    violations = {pkg: sorted(m for m in imports_of(pkg) if not allowed(pkg, m)) for pkg in ALLOWED}
    assert {pkg: v for pkg, v in violations.items() if v} == {}


def test_gateway_modules_do_not_pull_in_torch_or_onnxruntime():
    import subprocess
    import sys

    code = (
        "import sys, streaminfer.gateway.app, streaminfer.gateway.routes; "
        "print([m for m in ('torch', 'onnxruntime') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_schemas_imports_nothing_from_the_rest_of_the_project() -> None:
    import ast

    for path in SCHEMA_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                ours = name == "streaminfer" or name.startswith("streaminfer.")
                assert not ours or name.startswith("streaminfer.schemas"), path
