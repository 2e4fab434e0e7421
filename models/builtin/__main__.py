"""``python -m streaminfer.models.builtin [--repo PATH] [--force] [--tasks a,b]``: build the built-in models."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from streaminfer.models.builtin import BUILTIN_TASKS, build_all, default_repository
from streaminfer.models.errors import ModelError

logger = logging.getLogger(__name__)

_HEADLINES = {
    "accuracy": "held-out accuracy {:.4f}",
    "min_cosine_vs_transformers": "min cosine vs transformers {:.6f}",
}


def _summary(task: str, metrics: dict) -> str:
    parts = [fmt.format(metrics[key]) for key, fmt in _HEADLINES.items() if key in metrics]
    if "n_test" in metrics:
        parts.append(f"on {metrics['n_test']} test items")
    state = "already built" if metrics.get("skipped") else f"built in {metrics['build_seconds']}s"
    return f"{task:<18} {state:<18} " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streaminfer.models.builtin", description=__doc__
    )
    parser.add_argument("--repo", type=Path, default=default_repository(), help="model repository")
    parser.add_argument("--force", action="store_true", help="rebuild tasks that are built")
    parser.add_argument(
        "--tasks", help=f"comma-separated subset of {','.join(BUILTIN_TASKS)} (default: all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo"):
        logging.getLogger(chatty).setLevel(logging.WARNING)  # exporter passes log every rewrite
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()] if args.tasks else None

    started = time.perf_counter()
    try:
        results = build_all(args.repo, force=args.force, tasks=tasks)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nmodel repository: {args.repo}")
    for task, metrics in results.items():
        print(_summary(task, metrics))
    print(f"total {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
