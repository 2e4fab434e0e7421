"""The model alone, as a worker runs it: the baseline every other scenario is compared with."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .figures import TASK, Figures, figures


def bench_raw(repository: Path, texts: list[str], batch: int, threads: int | None) -> Figures:
    """The model alone, configured as a worker runs it: consecutive batches of ``batch`` texts,
    ``instances`` of them computing at once (model.yaml); latency = one batch's compute."""
    from streaminfer.models.repository import ModelRepository

    repo = ModelRepository(repository, device="cpu", intra_op_num_threads=threads)
    instances = repo.get_config(TASK).instances
    model = repo.load(TASK)
    progress = tqdm(
        total=len(texts), desc=f"raw onnxruntime batch={batch}", unit="item", leave=False
    )

    def one(i: int) -> float:
        t0 = time.perf_counter()
        model.predict_batch({"text": np.array(texts[i : i + batch], dtype=object)})
        progress.update(len(texts[i : i + batch]))
        return time.perf_counter() - t0

    start, cpu_start = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(instances) as pool:
        latencies = list(pool.map(one, range(0, len(texts), batch)))
    seconds = time.perf_counter() - start
    progress.close()
    found = figures(f"raw onnxruntime (batch {batch})", batch, latencies, seconds, len(texts))
    found.cpu_ms_per_item = {
        "model": round(1000 * (time.process_time() - cpu_start) / len(texts), 2)
    }
    return found
