"""An in-memory cosine index over one collection's vectors: exact search (a normalised float32
numpy matrix, one matrix-vector product) up to ``EXACT_LIMIT`` items, an HNSW graph (usearch)
past it, whose recall@10 against exact search ``streaminfer bench --scenario collections``
measures (docs/benchmarks.md). A graph calibrates its search beam when it is built and each
time it has doubled since: the smallest ``expansion_search`` whose recall@10 on a sample of its
own items (against exact search) reaches ``TARGET_RECALL``. Clustered data, as embedding models
produce, stays at the starting beam; uniformly random vectors, where every distance is alike,
get a wider one, or exact search when no beam up to MAX_EXPANSION_SEARCH reaches it.

Exact search is 0.3 ms at 10,000 384-d vectors and grows linearly (33 ms at 100,000), while HNSW
answers in under 1 ms at 100,000 (docs/benchmarks.md): below the limit there is little to win by
approximating, and no graph to build or keep. A search with a metadata filter is always exact
over the matching rows: post-filtering an approximate top k would lose matches whenever the
filter is selective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXACT_LIMIT = 20_000
"""Past this many items a collection also keeps an HNSW graph and searches it."""
CONNECTIVITY = 32
EXPANSION_ADD = 128
"""The graph's degree and build beam (usearch's ``connectivity`` and ``expansion_add``): at 16
and 64, uniformly random 384-d vectors did not reach recall@10 0.95 at 10k below a beam of 1024
(slower than exact search); at 32 and 128 they do at 256-512 (docs/benchmarks.md)."""
GRAPH_DTYPE = "i8"
"""The graph holds its vectors quantised to int8 (a quarter of the memory, a build about 4 times
faster than float32); candidates are re-ranked with the exact float32 vectors, so scores are
exact and the quantisation costs no recall past the candidate list's."""
OVERSAMPLE = 5
MIN_CANDIDATES = 50
"""A graph search asks for ``max(OVERSAMPLE * k, MIN_CANDIDATES)`` candidates and keeps the
``k`` best by exact cosine."""
EXPANSION_SEARCH = 256
"""The search beam a graph starts with (usearch's ``expansion_search``); calibrated upwards."""
MAX_EXPANSION_SEARCH = 1024
TARGET_RECALL = 0.97
"""What the calibration aims at: recall@10 against exact search, on stored items as queries
(a margin above the 0.95 promised). A graph that misses it at MAX_EXPANSION_SEARCH is not
searched: the collection is served exactly (uniformly random vectors at 100k, docs/benchmarks.md)."""
CALIBRATION_QUERIES = 64


@dataclass(frozen=True, slots=True)
class Match:
    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "metadata": self.metadata}


def normalised(vector: np.ndarray) -> np.ndarray:
    """``vector`` as float32 of unit length (callers reject zero and non-finite vectors first)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    return v / np.float32(np.linalg.norm(v))


class VectorIndex:
    """Ids, unit vectors and metadata of one collection; not thread-safe (one event loop)."""

    def __init__(
        self,
        dimension: int,
        *,
        exact_limit: int = EXACT_LIMIT,
        expansion_search: int = EXPANSION_SEARCH,
    ) -> None:
        self.dimension = dimension
        self.exact_limit = exact_limit
        self.expansion_search = expansion_search
        self._start_beam = expansion_search
        self._matrix = np.zeros((16, dimension), dtype=np.float32)
        self._ids: list[str] = []
        self._metadata: list[dict[str, Any]] = []
        self._labels: list[int] = []  # the HNSW key of each row
        self._rows: dict[str, int] = {}
        self._row_of_label: dict[int, int] = {}
        self._next_label = 0
        self._graph = None  # usearch Index, past exact_limit
        self._calibrated_at = 0  # items when the beam was last calibrated
        self.recall_estimate: float | None = None
        self.graph_falls_short = False  # calibrated: no beam reaches TARGET_RECALL, search exactly

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    @property
    def is_approximate(self) -> bool:
        """Whether searches go through the graph (past the limit, and calibrated to reach
        TARGET_RECALL)."""
        return self._graph is not None and not self.graph_falls_short

    def upsert(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any] | None = None
    ) -> None:
        v = normalised(vector)
        if v.shape != (self.dimension,):
            raise ValueError(f"vector has {v.shape[0]} dimensions, the index {self.dimension}")
        row = self._rows.get(item_id)
        if row is None:
            row = len(self._ids)
            if row == len(self._matrix):
                self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
            self._ids.append(item_id)
            self._metadata.append({})
            self._labels.append(-1)
            self._rows[item_id] = row
        elif self._graph is not None:
            self._graph.remove(self._labels[row])
            del self._row_of_label[self._labels[row]]
        self._matrix[row] = v
        self._metadata[row] = dict(metadata or {})
        label = self._labels[row] = self._next_label
        self._next_label += 1
        self._row_of_label[label] = row
        if self._graph is not None:
            self._graph.add(label, v)
            self._maybe_calibrate()
        elif len(self._ids) > self.exact_limit:
            self._build_graph()

    def remove(self, item_id: str) -> bool:
        row = self._rows.pop(item_id, None)
        if row is None:
            return False
        label = self._labels[row]
        del self._row_of_label[label]
        if self._graph is not None:
            self._graph.remove(label)
        last = len(self._ids) - 1
        if row != last:  # the last row fills the hole
            self._matrix[row] = self._matrix[last]
            self._ids[row], self._metadata[row] = self._ids[last], self._metadata[last]
            self._labels[row] = self._labels[last]
            self._rows[self._ids[row]] = row
            self._row_of_label[self._labels[row]] = row
        self._ids.pop()
        self._metadata.pop()
        self._labels.pop()
        if self._graph is not None and len(self._ids) <= self.exact_limit // 2:
            self._graph = None  # small again: exact search, and no deleted nodes kept around
            self._calibrated_at, self.graph_falls_short = 0, False
        return True

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        where: dict[str, Any] | None = None,
        exclude: str | None = None,
    ) -> list[Match]:
        """The ``k`` best matches of ``query`` by cosine, best first; ``where``: metadata keys
        that must equal these values; ``exclude``: an id left out (the query item itself)."""
        q = normalised(query)
        n = len(self._ids)
        if k <= 0 or n == 0:
            return []
        if where:
            rows = np.fromiter(
                (
                    i
                    for i, m in enumerate(self._metadata)
                    if all(key in m and m[key] == value for key, value in where.items())
                ),
                dtype=np.int64,
            )
            return self._exact(q, k, rows, exclude)
        if self.is_approximate:
            return self._approximate(q, k, exclude)
        return self._exact(q, k, None, exclude)

    def _exact(
        self, q: np.ndarray, k: int, rows: np.ndarray | None, exclude: str | None
    ) -> list[Match]:
        scores = self._matrix[: len(self._ids)] @ q  # a view: no copy of the matrix
        if rows is None:
            rows = np.arange(scores.size)
        else:
            scores = scores[rows]
        if exclude is not None and (skip := self._rows.get(exclude)) is not None:
            keep = rows != skip
            rows, scores = rows[keep], scores[keep]
        if rows.size == 0:
            return []
        take = min(k, rows.size)
        best = (
            np.argpartition(-scores, take - 1)[:take] if take < rows.size else np.arange(rows.size)
        )
        best = best[np.argsort(-scores[best], kind="stable")]
        return [self._match(int(rows[i]), float(scores[i])) for i in best]

    def _approximate(self, q: np.ndarray, k: int, exclude: str | None) -> list[Match]:
        skip = self._rows.get(exclude) if exclude is not None else None
        rows = self._candidates(q.reshape(1, -1), k)[0]
        rows = rows[rows != skip] if skip is not None else rows
        scores = self._matrix[rows] @ q  # exact, from the float32 vectors
        best = np.argsort(-scores, kind="stable")[:k]
        return [self._match(int(rows[i]), float(scores[i])) for i in best]

    def _candidates(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """Per query, the rows the graph offers for its ``k`` best (oversampled; one more for
        an item to leave out)."""
        count = min(len(self._ids), max(OVERSAMPLE * k, MIN_CANDIDATES) + 1)
        self._graph.expansion_search = max(self.expansion_search, count)
        found = self._graph.search(queries, count, threads=1)
        if hasattr(found, "counts"):  # a batch: rows padded past each query's count
            lists = [keys[:n] for keys, n in zip(found.keys, found.counts, strict=True)]
        else:  # one query: only what was found
            lists = [found.keys]
        out = []
        for labels in lists:
            rows = (self._row_of_label.get(int(label)) for label in labels)
            out.append(np.fromiter((r for r in rows if r is not None), dtype=np.int64))
        return out

    def _match(self, row: int, score: float) -> Match:
        return Match(self._ids[row], min(1.0, max(-1.0, score)), self._metadata[row])

    def _build_graph(self) -> None:
        from usearch.index import Index  # only collections past the limit pay its import

        n = len(self._ids)
        graph = Index(
            ndim=self.dimension,
            metric="cos",
            dtype=GRAPH_DTYPE,
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=self.expansion_search,
        )
        graph.add(np.asarray(self._labels, dtype=np.uint64), self._matrix[:n])
        self._graph = graph
        self._calibrate()

    def _maybe_calibrate(self) -> None:
        if self._graph is not None and len(self._ids) >= 2 * self._calibrated_at:
            self._calibrate()

    def _calibrate(self) -> None:
        """Set ``expansion_search`` to the smallest beam (doubling from the starting one) whose
        recall@10 on stored items as queries, themselves excluded, reaches TARGET_RECALL; when
        none up to MAX_EXPANSION_SEARCH does, searches go exact (``graph_falls_short``). The
        estimate is kept in ``recall_estimate``."""
        n = len(self._ids)
        k = min(10, n - 1)
        if k <= 0:
            return
        rng = np.random.default_rng(n)  # the same sample for the same size: reproducible
        rows = rng.choice(n, min(CALIBRATION_QUERIES, n), replace=False)
        queries = self._matrix[rows]
        truth = self._exact_top(queries, rows, k)
        beam = self._start_beam
        while True:
            self.expansion_search = beam
            hits = 0
            for query, own, want in zip(queries, rows, truth, strict=True):
                offered = self._candidates(query.reshape(1, -1), k)[0]
                offered = offered[offered != own]
                top = offered[np.argsort(-(self._matrix[offered] @ query), kind="stable")[:k]]
                hits += len(set(top.tolist()) & set(want.tolist()))
            recall = hits / (k * rows.size)
            if recall >= TARGET_RECALL or beam >= MAX_EXPANSION_SEARCH:
                break
            beam *= 2
        self.recall_estimate, self._calibrated_at = recall, n
        self.graph_falls_short = recall < TARGET_RECALL

    def _exact_top(
        self, queries: np.ndarray, rows: np.ndarray, k: int, chunk: int = 65_536
    ) -> np.ndarray:
        """The rows of the ``k`` best items of each query (its own row left out), read in
        chunks: never a queries x items matrix of a large collection in memory."""
        n = len(self._ids)
        best_rows = np.empty((rows.size, 0), dtype=np.int64)
        best_scores = np.empty((rows.size, 0), dtype=np.float32)
        for start in range(0, n, chunk):
            scores = queries @ self._matrix[start : min(n, start + chunk)].T
            inside = (rows >= start) & (rows < start + scores.shape[1])
            scores[np.nonzero(inside)[0], rows[inside] - start] = -np.inf  # the query item itself
            candidates = np.concatenate([best_scores, scores], axis=1)
            ids = np.concatenate(
                [
                    best_rows,
                    np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape),
                ],
                axis=1,
            )
            take = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(candidates, take, axis=1)
            best_rows = np.take_along_axis(ids, take, axis=1)
        return best_rows

    def upsert_many(self, items: list[tuple[str, np.ndarray, dict[str, Any]]]) -> None:
        """Bulk load: past the limit the graph is built once, in one multi-threaded add."""
        graph, self._graph = self._graph, None
        limit, self.exact_limit = self.exact_limit, 1 << 62
        try:
            if graph is not None:
                stale = {
                    self._labels[row]
                    for item_id, _, _ in items
                    if (row := self._rows.get(item_id)) is not None
                }
                for label in stale:
                    graph.remove(label)
            for item_id, vector, metadata in items:
                self.upsert(item_id, vector, metadata)
        finally:
            self.exact_limit = limit
        if graph is not None:
            fresh = sorted({self._rows[item_id] for item_id, _, _ in items})
            graph.add(
                np.asarray([self._labels[r] for r in fresh], dtype=np.uint64), self._matrix[fresh]
            )
            self._graph = graph
            self._maybe_calibrate()
        elif len(self._ids) > self.exact_limit:
            self._build_graph()
