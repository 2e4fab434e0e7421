"""``streaminfer bench --scenario collections``: search latency (p50/p99) and recall@10 of the
collection index (``schemas.vectors.VectorIndex``) on random and clustered 384-d vectors, exact
(numpy) and HNSW (usearch, built for every size here so both can be compared, and calibrated as
a collection's is), recall measured against exact search with fresh queries: of the graph
itself, and of what a collection of that size serves (exact when the graph falls short). In-process: no broker, no Redis (a search's Redis round trip, one
``ZRANGEBYSCORE`` when nothing changed, comes on top)."""

from __future__ import annotations

import time

import numpy as np

from streaminfer.schemas.vectors import EXACT_LIMIT, VectorIndex

DIMENSION = 384
QUERIES = 200
K = 10


def vectors(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``random``: uniform on the sphere (every distance alike: the hardest case for a graph);
    ``clustered``: 100 centres and noise, closer to what embedding models produce."""
    if kind == "random":
        return rng.standard_normal((n, DIMENSION), dtype=np.float32)
    centres = rng.standard_normal((100, DIMENSION), dtype=np.float32)
    return centres[rng.integers(0, 100, n)] + 0.35 * rng.standard_normal(
        (n, DIMENSION), dtype=np.float32
    )


def _timed(index: VectorIndex, queries: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    found, seconds = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append([m.id for m in index.search(q, K)])
        seconds.append(time.perf_counter() - t0)
    return found, np.asarray(seconds) * 1000.0


def bench_collection(kind: str, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = vectors(kind, n, rng)
    queries = (
        vectors(kind, QUERIES, rng)
        if kind == "random"
        else (
            data[rng.integers(0, n, QUERIES)]
            + 0.1 * rng.standard_normal((QUERIES, DIMENSION), dtype=np.float32)
        )
    )
    items = [(f"v{i}", v, {}) for i, v in enumerate(data)]
    exact = VectorIndex(DIMENSION, exact_limit=1 << 62)
    exact.upsert_many(items)
    truth, exact_ms = _timed(exact, queries)
    graph = VectorIndex(DIMENSION, exact_limit=0)
    t0 = time.perf_counter()
    graph.upsert_many(items)
    build_s = time.perf_counter() - t0
    falls_short = graph.graph_falls_short
    graph.graph_falls_short = False  # measure the graph itself, even where it is not served
    found, graph_ms = _timed(graph, queries)
    graph.graph_falls_short = falls_short

    def recall(of: list[list[str]]) -> float:
        return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(of, truth, strict=True)]))

    served_by = "exact" if n <= EXACT_LIMIT or falls_short else "hnsw"
    return {
        "kind": kind,
        "items": n,
        "served_by": served_by,
        "exact_p50_ms": float(np.percentile(exact_ms, 50)),
        "exact_p99_ms": float(np.percentile(exact_ms, 99)),
        "hnsw_p50_ms": float(np.percentile(graph_ms, 50)),
        "hnsw_p99_ms": float(np.percentile(graph_ms, 99)),
        "hnsw_recall_at_10": recall(found),
        "served_recall_at_10": 1.0 if served_by == "exact" else recall(found),
        "hnsw_expansion_search": graph.expansion_search,
        "hnsw_calibrated_recall": graph.recall_estimate,
        "hnsw_build_s": build_s,
    }


def bench_collections(sizes: list[int], kinds: list[str]) -> list[dict]:
    rows = []
    for kind in kinds:
        for n in sizes:
            row = bench_collection(kind, n)
            print(
                f"  {kind:9s} {n:>7d}: exact p50 {row['exact_p50_ms']:.2f} ms p99 {row['exact_p99_ms']:.2f} ms | "
                f"hnsw p50 {row['hnsw_p50_ms']:.2f} ms p99 {row['hnsw_p99_ms']:.2f} ms recall@10 "
                f"{row['hnsw_recall_at_10']:.3f} at beam {row['hnsw_expansion_search']} (calibrated "
                f"{row['hnsw_calibrated_recall']:.3f}; built in {row['hnsw_build_s']:.1f} s) | served by "
                f"{row['served_by']}, recall@10 {row['served_recall_at_10']:.3f}",
                flush=True,
            )
            rows.append(row)
    return rows
