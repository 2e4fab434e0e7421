"""An in-memory cosine index over one collection's vectors: exact search (a normalised float32
numpy matrix, one matrix-vector product) up to ``EXACT_LIMIT`` items, an HNSW graph (usearch)
past it, whose recall@10 against exact search ``streaminfer bench --scenario collections``
measures (docs/benchmarks.md).

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
EXPANSION_SEARCH = 256
"""HNSW beam width at search time (usearch's ``expansion_search``). Measured at 20k 384-d
vectors: recall@10 0.99 on clustered data (as real embeddings are) in under 1 ms; uniformly
random vectors, the pathological case where every distance is alike, need about 1024 for 0.94,
which costs more than exact search (docs/benchmarks.md)."""
EXPANSION_ADD = 64
CONNECTIVITY = 16


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

    def __init__(self, dimension: int, *, exact_limit: int = EXACT_LIMIT,
                 expansion_search: int = EXPANSION_SEARCH) -> None:
        self.dimension = dimension
        self.exact_limit = exact_limit
        self.expansion_search = expansion_search
        self._matrix = np.zeros((16, dimension), dtype=np.float32)
        self._ids: list[str] = []
        self._metadata: list[dict[str, Any]] = []
        self._labels: list[int] = []  # the HNSW key of each row
        self._rows: dict[str, int] = {}
        self._row_of_label: dict[int, int] = {}
        self._next_label = 0
        self._graph = None  # usearch Index, past exact_limit

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    @property
    def is_approximate(self) -> bool:
        return self._graph is not None

    def upsert(self, item_id: str, vector: np.ndarray, metadata: dict[str, Any] | None = None) -> None:
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
        return True

    def search(self, query: np.ndarray, k: int, *, where: dict[str, Any] | None = None,
               exclude: str | None = None) -> list[Match]:
        """The ``k`` best matches of ``query`` by cosine, best first; ``where``: metadata keys
        that must equal these values; ``exclude``: an id left out (the query item itself)."""
        q = normalised(query)
        n = len(self._ids)
        if k <= 0 or n == 0:
            return []
        if where:
            rows = np.fromiter((i for i, m in enumerate(self._metadata)
                                if all(key in m and m[key] == value for key, value in where.items())),
                               dtype=np.int64)
            return self._exact(q, k, rows, exclude)
        if self._graph is not None:
            return self._approximate(q, k, exclude)
        return self._exact(q, k, None, exclude)

    def _exact(self, q: np.ndarray, k: int, rows: np.ndarray | None, exclude: str | None) -> list[Match]:
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
        best = np.argpartition(-scores, take - 1)[:take] if take < rows.size else np.arange(rows.size)
        best = best[np.argsort(-scores[best], kind="stable")]
        return [self._match(int(rows[i]), float(scores[i])) for i in best]

    def _approximate(self, q: np.ndarray, k: int, exclude: str | None) -> list[Match]:
        count = min(len(self._ids), k + (exclude is not None))
        self._graph.expansion_search = max(self.expansion_search, count)
        found = self._graph.search(q, count)
        matches = []
        for label, distance in zip(found.keys, found.distances, strict=True):
            row = self._row_of_label.get(int(label))
            if row is None or self._ids[row] == exclude:
                continue
            matches.append(self._match(row, 1.0 - float(distance)))
        return matches[:k]

    def _match(self, row: int, score: float) -> Match:
        return Match(self._ids[row], min(1.0, max(-1.0, score)), self._metadata[row])

    def _build_graph(self) -> None:
        from usearch.index import Index  # only collections past the limit pay its import

        n = len(self._ids)
        graph = Index(ndim=self.dimension, metric="ip", dtype="f32", connectivity=CONNECTIVITY,
                      expansion_add=EXPANSION_ADD, expansion_search=self.expansion_search)
        graph.add(np.asarray(self._labels, dtype=np.uint64), self._matrix[:n])
        self._graph = graph

    def upsert_many(self, items: list[tuple[str, np.ndarray, dict[str, Any]]]) -> None:
        """Bulk load: past the limit the graph is built once, in one multi-threaded add."""
        graph, self._graph = self._graph, None
        limit, self.exact_limit = self.exact_limit, 1 << 62
        try:
            if graph is not None:
                stale = {self._labels[row] for item_id, _, _ in items
                         if (row := self._rows.get(item_id)) is not None}
                for label in stale:
                    graph.remove(label)
            for item_id, vector, metadata in items:
                self.upsert(item_id, vector, metadata)
        finally:
            self.exact_limit = limit
        if graph is not None:
            fresh = sorted({self._rows[item_id] for item_id, _, _ in items})
            graph.add(np.asarray([self._labels[r] for r in fresh], dtype=np.uint64), self._matrix[fresh])
            self._graph = graph
        elif len(self._ids) > self.exact_limit:
            self._build_graph()
