"""The collection index (exact and HNSW search, filters, the query item left out), the checks
every collection call goes through, and the result's ``similar`` field as an Avro extension
that readers of the previous version still decode."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

from streaminfer.schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec
from streaminfer.schemas.collections import (
    MAX_K,
    CollectionError,
    check_embedding,
    check_item_id,
    check_k,
    check_metadata,
    check_name,
    collection_parameters,
)
from streaminfer.schemas.records import InferenceResult, Status
from streaminfer.schemas.vectors import VectorIndex

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"
V2 = SCHEMA_DIR / "history" / "io.streaminfer.v1.InferenceResult.v2.avsc"


def clustered(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d)).astype(np.float32)
    return centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)


def test_exact_search_is_cosine_best_first_without_the_excluded_item() -> None:
    index = VectorIndex(3)
    index.upsert("x", np.array([1.0, 0.0, 0.0]), {"kind": "axis"})
    index.upsert("near-x", np.array([10.0, 2.0, 0.0]))  # scale does not matter: cosine
    index.upsert("y", np.array([0.0, 1.0, 0.0]), {"kind": "axis"})
    found = index.search(np.array([1.0, 0.05, 0.0]), 3)
    assert [m.id for m in found] == ["x", "near-x", "y"]
    assert found[0].score == pytest.approx(1 / np.sqrt(1 + 0.05**2), rel=1e-5)
    assert [m.id for m in index.search(np.array([1.0, 0.0, 0.0]), 2, exclude="x")] == [
        "near-x",
        "y",
    ]
    assert [m.id for m in index.search(np.array([1.0, 0.0, 0.0]), 5, where={"kind": "axis"})] == [
        "x",
        "y",
    ]
    assert index.search(np.array([1.0, 0.0, 0.0]), 5, where={"kind": "none"}) == []
    assert index.search(np.array([1.0, 0.0, 0.0]), 0) == []


def test_upsert_replaces_and_remove_forgets() -> None:
    index = VectorIndex(2)
    for i in range(40):  # past the first capacity: the matrix grows
        index.upsert(f"i{i}", np.array([1.0, i / 40]))
    index.upsert("i0", np.array([0.0, 1.0]), {"moved": True})
    assert len(index) == 40
    assert index.search(np.array([0.0, 1.0]), 1)[0].id == "i0"
    assert index.remove("i0") and not index.remove("i0")
    assert "i0" not in index and len(index) == 39
    assert all(m.id != "i0" for m in index.search(np.array([0.0, 1.0]), 39))
    with pytest.raises(ValueError):
        index.upsert("bad", np.array([1.0, 2.0, 3.0]))


def test_the_hnsw_index_keeps_recall_at_10_against_exact_search() -> None:
    data = clustered(3000)
    approximate = VectorIndex(64, exact_limit=1000)
    exact = VectorIndex(64, exact_limit=10**9)
    items = [(f"v{i}", v, {}) for i, v in enumerate(data)]
    approximate.upsert_many(items)
    exact.upsert_many(items)
    assert approximate.is_approximate and not exact.is_approximate
    queries = clustered(50, seed=1)
    recall = np.mean(
        [
            len({m.id for m in approximate.search(q, 10)} & {m.id for m in exact.search(q, 10)})
            / 10
            for q in queries
        ]
    )
    assert recall >= 0.95
    # writes after the build reach the graph: removed ids are never found, new ones are
    for i in range(0, 3000, 2):
        approximate.remove(f"v{i}")
    approximate.upsert("fresh", queries[0])
    found = approximate.search(queries[0], 10, exclude="v1")
    assert found[0].id == "fresh" and all(int(m.id[1:]) % 2 == 1 for m in found[1:])
    assert "v1" not in {m.id for m in found}


def test_uniformly_random_vectors_keep_recall_at_10_through_the_graph() -> None:
    """The hard case for HNSW (every distance alike), forced through the graph: fresh queries,
    not stored items, reach recall@10 >= 0.95 against exact search once the beam is calibrated."""
    import time

    rng = np.random.default_rng(7)
    data = rng.standard_normal((3000, 384), dtype=np.float32)
    items = [(f"v{i}", v, {}) for i, v in enumerate(data)]
    started = time.perf_counter()
    approximate = VectorIndex(384, exact_limit=1000)
    approximate.upsert_many(items)
    built = time.perf_counter() - started
    exact = VectorIndex(384, exact_limit=10**9)
    exact.upsert_many(items)
    assert approximate.is_approximate and approximate.recall_estimate >= 0.97
    queries = rng.standard_normal((100, 384), dtype=np.float32)
    recall = np.mean(
        [
            len({m.id for m in approximate.search(q, 10)} & {m.id for m in exact.search(q, 10)})
            / 10
            for q in queries
        ]
    )
    assert recall >= 0.95, (recall, approximate.expansion_search)
    assert built < 30, f"built and calibrated in {built:.1f} s"


def test_a_graph_that_cannot_reach_the_target_recall_is_not_searched(monkeypatch) -> None:
    from streaminfer.schemas import vectors

    monkeypatch.setattr(vectors, "TARGET_RECALL", 1.01)  # no beam reaches it
    monkeypatch.setattr(vectors, "MAX_EXPANSION_SEARCH", 512)
    data = np.random.default_rng(3).standard_normal((1500, 32), dtype=np.float32)
    index = VectorIndex(32, exact_limit=1000)
    index.upsert_many([(f"v{i}", v, {}) for i, v in enumerate(data)])
    assert index.graph_falls_short and not index.is_approximate and index.expansion_search == 512
    exact = VectorIndex(32, exact_limit=10**9)
    exact.upsert_many([(f"v{i}", v, {}) for i, v in enumerate(data)])
    q = data[0] + 0.01
    assert [m.id for m in index.search(q, 10)] == [m.id for m in exact.search(q, 10)]


@pytest.mark.parametrize(
    "vector",
    [
        [],
        [0.0, 0.0],
        [1.0, float("nan")],
        [float("inf"), 1.0],
        [1e39, 1.0],
        [[1.0, 2.0], [3.0, 4.0]],
        "text",
        [1.0] * 4097,
        None,
    ],
)
def test_hostile_embeddings_are_refused(vector) -> None:
    with pytest.raises(CollectionError) as caught:
        check_embedding(vector)
    assert caught.value.code == "INVALID_REQUEST"


def test_a_vector_below_float32s_range_keeps_its_direction() -> None:
    """Valid JSON numbers that all underflow float32 (found by the contract test) are no zero
    vector: scaled up, the direction stays; one that does not underflow is stored as given."""
    tiny = check_embedding([2.7e-56, -5.4e-56])
    assert tiny.dtype == np.float32 and tiny.tolist() == [0.5, -1.0]
    assert check_embedding([0.25, -3.0]).tolist() == [0.25, -3.0]


def test_k_names_ids_and_metadata() -> None:
    assert check_k(3) == 3 and check_k("7") == 7 and check_k(10**12) == MAX_K
    for bad in (0, -1, "abc", "", 1.5, True, None):
        with pytest.raises(CollectionError):
            check_k(bad)
    assert check_name("songs_2024-v1") == "songs_2024-v1"
    for bad in ("", "Songs", "a:b", "a/b", "songs\n", "x" * 64, "-lead"):
        with pytest.raises(CollectionError):
            check_name(bad)
    assert check_item_id("track:42@spotify") == "track:42@spotify"
    assert check_item_id("a" * 256)
    for bad in ("", "a" * 257, "a/b", "a b", "id\n"):
        with pytest.raises(CollectionError):
            check_item_id(bad)
    assert check_metadata({"genre": "jazz", "year": 1959, "live": False, "x": None}) == {
        "genre": "jazz",
        "year": 1959,
        "live": False,
        "x": None,
    }
    for bad in ({"x": "y" * 5000}, {"x": [1]}, {"x": {"y": 1}}, {"x": float("nan")}, ["x"]):
        with pytest.raises(CollectionError):
            check_metadata(bad)


def test_collection_parameters_of_a_request() -> None:
    assert collection_parameters({}) is None
    asked = collection_parameters({"collection": "songs", "item_id": "a", "similar_k": "500"})
    assert (asked.collection, asked.item_id, asked.similar_k) == ("songs", "a", MAX_K)
    for bad in (
        {"item_id": "a"},
        {"similar_k": "3"},
        {"collection": "songs"},
        {"collection": "songs", "similar_k": "0"},
        {"collection": "So ngs", "item_id": "a"},
    ):
        with pytest.raises(CollectionError):
            collection_parameters(bad)


def _result(similar=None) -> InferenceResult:
    return InferenceResult(
        request_id="r-1",
        task="text-embedding",
        status=Status.SUCCEEDED,
        worker_id="w",
        created_at=1,
        completed_at=2,
        similar=similar,
    )


def test_a_result_of_the_previous_version_decodes_without_similar() -> None:
    codec = AvroCodec()
    older = parse_schema(json.loads(V2.read_text()))
    out = BytesIO()
    out.write(
        SINGLE_OBJECT_MAGIC
        + bytes.fromhex(fingerprint(to_parsing_canonical_form(older), "CRC-64-AVRO"))
    )
    schemaless_writer(out, older, {k: v for k, v in _result().to_avro().items() if k != "similar"})
    assert out.getvalue()[2:10] != codec.fingerprint(InferenceResult)  # a real older writer
    assert codec.decode(out.getvalue(), InferenceResult).similar is None


def test_the_previous_reader_reads_a_result_with_similar() -> None:
    codec = AvroCodec()
    similar = [{"id": "a", "score": 0.9, "metadata": '{"genre": "jazz"}'}]
    data = codec.encode(_result(similar))
    assert codec.decode(data, InferenceResult).similar == similar
    writer = parse_schema(load_schema(str(SCHEMA_DIR / "io.streaminfer.v1.InferenceResult.avsc")))
    reader = parse_schema(json.loads(V2.read_text()))
    old = schemaless_reader(BytesIO(data[10:]), writer, reader)
    assert old["request_id"] == "r-1" and "similar" not in old
