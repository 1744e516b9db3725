"""VectorIndex (exact and approximate FAISS search) and the on-disk RetrievalIndex folder."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from radlens.core.errors import InputError
from radlens.data.schema import CHEXPERT_LABELS, ImageRecord, ReportSections, StudyRecord
from radlens.retrieval.index import (
    IMAGES_FILE,
    INFO_FILE,
    METADATA_FILE,
    TEXTS_FILE,
    RetrievalIndex,
    SearchFilter,
    VectorIndex,
    default_nlist,
    metadata_row,
)

DIM = 32
SECRET = "SECRET-REPORT-TEXT small left apical pneumothorax"


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng: np.random.Generator, count: int, centres: np.ndarray) -> np.ndarray:
    """Unit vectors scattered around random cluster centres: structure IVF and HNSW can exploit."""
    picks = rng.integers(0, len(centres), size=count)
    return _normalise(centres[picks] + rng.normal(scale=0.1, size=(count, centres.shape[1])))


@pytest.fixture(scope="session")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = _normalise(rng.normal(size=(50, DIM)))
    return _clustered(rng, 4000, centres), _clustered(rng, 100, centres)


def _brute_force(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ base.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def _overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Neighbour recall: the fraction of the true top-k found in the approximate top-k."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_flat_search_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    base, queries = _normalise(rng.normal(size=(500, DIM))), _normalise(rng.normal(size=(20, DIM)))
    index = VectorIndex.build(base)
    scores, ids = index.search(queries, 10)
    expected_scores, expected_ids = _brute_force(base, queries, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    # A single 1-D query is one row; k beyond the count is clipped to the count, no -1 padding.
    _, one_ids = index.search(queries[0], 10)
    np.testing.assert_array_equal(one_ids[0], expected_ids[0])
    small = VectorIndex.build(base[:3])
    _, ids = small.search(queries, 10)
    assert ids.shape == (20, 3) and (ids >= 0).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_recall_exact_top10(clustered: tuple, kind: str) -> None:
    base, queries = clustered
    index = VectorIndex.build(base, kind)  # type: ignore[arg-type]
    _, exact = _brute_force(base, queries, 10)
    scores, ids = index.search(queries, 10)
    assert _overlap(ids, exact) >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_ivf_defaults_and_nprobe() -> None:
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(1000) == 25  # capped at 39 training vectors per list
    assert default_nlist(10) == 1
    rng = np.random.default_rng(2)
    base = _normalise(rng.normal(size=(2000, DIM)))
    index = VectorIndex.build(base, "ivf", nlist=40, nprobe=4)
    assert index.index.nlist == 40 and index.nprobe == 4
    index.nprobe = 40  # scanning every list is exact
    queries = _normalise(rng.normal(size=(5, DIM)))
    np.testing.assert_array_equal(index.search(queries, 5)[1], _brute_force(base, queries, 5)[1])
    with pytest.raises(InputError, match="nprobe must be between"):
        index.nprobe = 41
    with pytest.raises(InputError, match="nprobe applies to IVF"):
        VectorIndex.build(base[:10]).nprobe = 2
    with pytest.raises(InputError, match="train_size 10 is below nlist 40"):
        VectorIndex.build(base, "ivf", nlist=40, train_size=10)
    with pytest.raises(
        InputError, match=rf"nlist must be between 1 and the number of vectors \({len(base)}\)"
    ):
        VectorIndex.build(base, "ivf", nlist=len(base) + 1)
    with pytest.raises(InputError, match="ef_search applies to HNSW indexes, this one is ivf"):
        index.ef_search = 8
    with pytest.raises(InputError, match="ef_search must be at least 1"):
        VectorIndex.build(base[:50], "hnsw").ef_search = 0
    with pytest.raises(InputError, match="k must be at least 1, got 0"):
        index.search(base[:2], 0)


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("hnsw", {"m": 0}, "m must be a whole number of at least 2, got 0"),  # FAISS would abort
        ("hnsw", {"m": 1}, "m must be a whole number of at least 2, got 1"),  # FAISS would segfault
        ("hnsw", {"m": 8.5}, "m must be a whole number of at least 2, got 8.5"),
        ("hnsw", {"ef_construction": 0}, "ef_construction must be a whole number of at least 1, got 0"),
        ("hnsw", {"ef_search": 0}, "ef_search must be a whole number of at least 1, got 0"),
        ("ivf", {"nprobe": 0}, "nprobe must be a whole number of at least 1, got 0"),
        ("ivf", {"nprobe": -3}, "nprobe must be a whole number of at least 1, got -3"),
    ],
)
def test_bad_build_parameters_are_refused_before_faiss(kind: str, params: dict, message: str) -> None:
    base = _normalise(np.random.default_rng(6).normal(size=(100, DIM)))
    with pytest.raises(InputError, match=re.escape(message)):
        VectorIndex.build(base, kind, **params)  # type: ignore[arg-type]


def test_smallest_valid_build_parameters_search() -> None:
    base = _normalise(np.random.default_rng(6).normal(size=(100, DIM)))
    for kind, params in (("hnsw", {"m": 2, "ef_construction": 1, "ef_search": 1}), ("ivf", {"nprobe": 1})):
        ids = VectorIndex.build(base, kind, **params).search(base[:3], 5)[1]  # type: ignore[arg-type]
        assert (ids >= 0).all() and ids.shape == (3, 5)


def test_short_approximate_results_are_filled_exactly() -> None:
    # 5 IVF lists of ~40 rows and nprobe=1: FAISS alone finds < 100 rows; the exact fallback fills them.
    rng = np.random.default_rng(4)
    base, queries = _normalise(rng.normal(size=(200, DIM))), _normalise(rng.normal(size=(6, DIM)))
    index = VectorIndex.build(base, "ivf", nlist=5, nprobe=1)
    assert (index.index.search(queries, 100)[1] < 0).any()  # raw FAISS pads with -1
    scores, ids = index.search(queries, 100)
    expected_scores, expected_ids = _brute_force(base, queries, 100)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)


def test_bad_vectors_are_refused() -> None:
    with pytest.raises(InputError, match="NaN"):
        VectorIndex.build(np.array([[0.0, np.nan]]))
    with pytest.raises(InputError, match="non-empty"):
        VectorIndex.build(np.zeros((0, 4)))
    with pytest.raises(InputError, match="unknown index kind"):
        VectorIndex.build(np.ones((3, 4)), "pq")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="dimension 3 but the index holds dimension 4"):
        VectorIndex.build(np.ones((3, 4))).search(np.ones((1, 3)), 1)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path: Path, clustered: tuple, kind: str) -> None:
    base, queries = clustered
    index = VectorIndex.build(base[:1000], kind, nprobe=3, ef_search=21)  # type: ignore[arg-type]
    index.save(tmp_path / "x.faiss")
    loaded = VectorIndex.load(tmp_path / "x.faiss")
    assert (loaded.kind, loaded.count, loaded.dim) == (kind, 1000, DIM)
    if kind == "ivf":
        assert loaded.nprobe == 3
    if kind == "hnsw":
        assert loaded.ef_search == 21
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert [p.name for p in tmp_path.iterdir()] == ["x.faiss"]  # no temporary file left behind


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_stored_vectors_are_the_vectors_built_from(clustered: tuple, kind: str) -> None:
    base = clustered[0][:500]
    index = VectorIndex.build(base, kind, nlist=8)  # type: ignore[arg-type]
    np.testing.assert_array_equal(index.vectors(), base)
    rows = np.array([499, 3, 3, 120])
    np.testing.assert_array_equal(index.vectors(rows), base[rows])
    np.testing.assert_array_equal(index.vectors([7]), base[[7]])
    assert index.vectors([]).shape == (0, DIM)
    with pytest.raises(IndexError, match=r"\[0, 500\)"):
        index.vectors([0, 500])


def test_a_loaded_ivf_index_serves_vectors_to_many_threads(clustered: tuple, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    base = clustered[0][:2000]
    loaded = VectorIndex.load(VectorIndex.build(base, "ivf", nlist=16).save(tmp_path / "x.faiss"))
    # The id → list map exists before any read, so concurrent first reads never build it together.
    assert faiss.extract_index_ivf(loaded.index).direct_map.type != faiss.DirectMap.NoMap
    chunks = np.array_split(np.random.default_rng(1).permutation(2000), 16)
    with ThreadPoolExecutor(8) as pool:
        for rows, got in zip(chunks, pool.map(loaded.vectors, chunks), strict=True):
            np.testing.assert_array_equal(got, base[rows])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filtered_search_is_exact_top_k_of_the_allowed_rows(clustered: tuple, kind: str) -> None:
    base, queries = clustered
    index = VectorIndex.build(base, kind)  # type: ignore[arg-type]
    for allowed in (np.arange(0, 4000, 400), np.arange(0, 4000, 3)):
        _, ids = index.search(queries[:20], 10, allowed)
        assert np.isin(ids, allowed).all()  # never -1: restrictive filters are never short
        _, exact = _brute_force(base[allowed], queries[:20], 10)
        # 10 allowed rows: every approximate kind must return exactly them (exact fallback).
        assert _overlap(ids, allowed[exact]) >= (1.0 if len(allowed) == 10 else 0.95)
    assert index.search(queries[:2], 10, np.array([], dtype=np.int64))[1].shape == (2, 0)
    with pytest.raises(InputError, match="row numbers"):
        index.search(queries[:2], 10, np.array([4000]))


def test_load_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing"):
        VectorIndex.load(tmp_path / "none.faiss")
    (tmp_path / "bad.faiss").write_bytes(b"not a faiss index at all")
    with pytest.raises(InputError, match="corrupt") as caught:
        VectorIndex.load(tmp_path / "bad.faiss")
    assert "\n" not in str(caught.value) and "radlens index build" in str(caught.value)
    VectorIndex.build(np.ones((50, 4))).save(tmp_path / "ok.faiss")
    data = (tmp_path / "ok.faiss").read_bytes()
    (tmp_path / "cut.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.faiss is corrupt"):
        VectorIndex.load(tmp_path / "cut.faiss")
    faiss.write_index(faiss.IndexFlatL2(4), str(tmp_path / "l2.faiss"))  # readable, but not inner product
    with pytest.raises(InputError, match="index type radlens does not use"):
        VectorIndex.load(tmp_path / "l2.faiss")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_saved_files_get_the_umask_mode(tmp_path: Path, umask: int, mode: int) -> None:
    """.faiss files get the permissions a plain open() gives, like the index's other files."""
    vectors = np.ones((5, 4), dtype=np.float32)
    previous = os.umask(umask)
    try:
        VectorIndex.build(vectors).save(tmp_path / "one.faiss")
        RetrievalIndex.create(
            tmp_path / "index",
            vectors,
            vectors,
            [{"study_id": f"s{i}"} for i in range(5)],
            "fp",
            "dual_encoder",
        )
    finally:
        os.umask(previous)
    for path in (tmp_path / "one.faiss", tmp_path / "index" / IMAGES_FILE, tmp_path / "index" / TEXTS_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert stat.S_IMODE((tmp_path / "index" / METADATA_FILE).stat().st_mode) == mode


# ---- RetrievalIndex ----------------------------------------------------------------------------


def _rows(count: int) -> list[dict]:
    """Metadata rows: views alternate PA/AP, every third is test split, Edema positive on even rows."""
    rows = []
    for i in range(count):
        labels = dict.fromkeys(CHEXPERT_LABELS)
        labels["Edema"] = 1.0 if i % 2 == 0 else 0.0
        labels["No Finding"] = 1.0 if i % 2 else None
        rows.append(
            {
                "study_id": f"s{i}",
                "subject_id": f"p{i // 2}",
                "image_id": f"img{i}",
                "image_path": Path(f"files/img{i}.jpg"),
                "view": "PA" if i % 2 else "ap",
                "split": "test" if i % 3 == 0 else "train",
                "labels": labels,
                "findings": f"{SECRET} {i}",
                "impression": None,
            }
        )
    return rows


@pytest.fixture(scope="session")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    images = _normalise(rng.normal(size=(60, DIM)))
    return images, _normalise(images + rng.normal(scale=0.3, size=images.shape))


@pytest.fixture()
def built(tmp_path: Path, vectors: tuple) -> Path:
    folder = tmp_path / "index"
    RetrievalIndex.create(folder, vectors[0], vectors[1], _rows(60), "fp-model-a", "dual_encoder")
    return folder


def test_create_writes_the_documented_folder(built: Path, vectors: tuple) -> None:
    assert sorted(p.name for p in built.iterdir()) == sorted(
        [IMAGES_FILE, TEXTS_FILE, METADATA_FILE, INFO_FILE]
    )
    info = json.loads((built / INFO_FILE).read_text())
    assert info["model_fingerprint"] == "fp-model-a" and info["model_type"] == "dual_encoder"
    assert info["embedding_dim"] == DIM and info["counts"] == {"images": 60, "texts": 60, "metadata": 60}
    assert info["kinds"] == {"images": "flat", "texts": "flat"} and info["format_version"] == 1
    assert "radlens_version" in info
    lines = (built / METADATA_FILE).read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 60 and first["image_path"] == "files/img0.jpg"  # Path stored as text
    assert list(first["labels"]) == list(CHEXPERT_LABELS) and first["labels"]["Edema"] == 1.0


def test_labels_matrix_follows_the_metadata_rows(built: Path) -> None:
    index = RetrievalIndex.open(built)
    labels = index.labels
    assert labels.shape == (60, len(CHEXPERT_LABELS)) and labels.dtype == np.float64
    edema, no_finding = CHEXPERT_LABELS.index("Edema"), CHEXPERT_LABELS.index("No Finding")
    np.testing.assert_array_equal(labels[:, edema], [1.0 if i % 2 == 0 else 0.0 for i in range(60)])
    assert np.isnan(labels[0, no_finding]) and labels[1, no_finding] == 1.0  # blank is NaN
    assert np.isnan(labels[:, CHEXPERT_LABELS.index("Fracture")]).all()
    with pytest.raises(ValueError):
        labels[0, edema] = 0.0  # read-only: search filters use the same matrix


def test_create_accepts_label_arrays_and_numpy_values(tmp_path: Path, vectors: tuple) -> None:
    labels = np.full((60, 14), np.nan)
    labels[3, CHEXPERT_LABELS.index("Edema")] = 1.0
    rows = [{"study_id": np.str_(f"s{i}"), "labels": labels[i], "age": np.int64(i)} for i in range(59)]
    rows.append({"study_id": np.int64(59), "labels": None})  # a numeric study id is stored as text
    index = RetrievalIndex.create(tmp_path / "i", vectors[0], vectors[1], rows, "fp", "dual_encoder")
    reopened = RetrievalIndex.open(tmp_path / "i")
    assert reopened.rows[3]["labels"]["Edema"] == 1.0 and reopened.rows[3]["age"] == 3
    assert reopened.rows[0]["labels"]["Edema"] is None  # NaN (not mentioned) is stored as null
    hits = reopened.search_text_vectors(vectors[1][:1], k=5, filters=SearchFilter(positive=("Edema",)))
    assert [hit["row"] for hit in hits[0]] == [3] and index.rows[3]["study_id"] == "s3"
    assert reopened.rows[59]["study_id"] == "59"


def test_open_and_search_both_directions(built: Path, vectors: tuple) -> None:
    images, texts = vectors
    index = RetrievalIndex.open(built, expected_fingerprint="fp-model-a")
    assert len(index) == 60 and index.fingerprint == "fp-model-a"
    results = index.search_text_vectors(texts[:5], k=4)
    expected_scores, expected_ids = _brute_force(images, texts[:5], 4)
    for hits, row_ids, row_scores in zip(results, expected_ids, expected_scores, strict=True):
        assert [hit["row"] for hit in hits] == row_ids.tolist()
        assert [hit["rank"] for hit in hits] == [1, 2, 3, 4]
        assert [hit["study_id"] for hit in hits] == [f"s{i}" for i in row_ids]
        np.testing.assert_allclose([hit["score"] for hit in hits], row_scores, rtol=1e-5)
    reports = index.search_image_vectors(images[7], k=3)
    assert len(reports) == 1 and reports[0][0]["row"] == _brute_force(texts, images[7:8], 1)[1][0, 0]
    assert reports[0][0]["findings"].startswith(SECRET)  # report sections come back for display


def test_search_filters(built: Path, vectors: tuple) -> None:
    images, texts = vectors
    index = RetrievalIndex.open(built)
    only = SearchFilter(positive=("Edema",), views=("AP",), splits=("TEST",))
    allowed = np.array([i for i in range(60) if i % 2 == 0 and i % 3 == 0])  # Edema rows are AP rows
    results = index.search_text_vectors(texts[:4], k=5, filters=only)
    _, exact = _brute_force(images[allowed], texts[:4], 5)
    for hits, expected in zip(results, allowed[exact], strict=True):
        assert [hit["row"] for hit in hits] == expected.tolist()
        assert all(hit["labels"]["Edema"] == 1.0 and hit["split"] == "test" for hit in hits)
    assert index.search_text_vectors(texts[:1], k=5, filters=SearchFilter(positive=("Pneumothorax",))) == [[]]
    # A lone string is accepted at run time as a one-item tuple (the CLI passes single options).
    pa_only = SearchFilter(views="pa")  # type: ignore[arg-type]
    assert pa_only.views == ("pa",)
    assert len(index.search_image_vectors(images[:1], k=100, filters=pa_only)[0]) == 30
    with pytest.raises(InputError, match="unknown label 'Oedema'"):
        SearchFilter(positive=("Oedema",))
    # What the view and split filters can select, in the case they are matched in.
    assert index.views == ["AP", "PA"] and index.splits == ["test", "train"]
    np.testing.assert_array_equal(index.matching_rows(only), allowed)  # the rows a search may return
    assert index.matching_rows(SearchFilter(splits=("validate",))).size == 0


def test_approximate_kinds_on_disk(tmp_path: Path, clustered: tuple) -> None:
    base, queries = clustered[0][:2000], clustered[1]
    rows = [{"study_id": f"s{i}", "labels": [1.0 if i % 5 == 0 else None] + [None] * 13} for i in range(2000)]
    for kind in ("ivf", "hnsw"):
        folder = tmp_path / kind
        RetrievalIndex.create(folder, base, base, rows, "fp", "dual_encoder", kind=kind)
        index = RetrievalIndex.open(folder)
        assert index.images.kind == kind and index.info["kinds"]["texts"] == kind
        hits = index.search_text_vectors(queries[:10], k=10, filters=SearchFilter(positive=("Atelectasis",)))
        assert all(len(row) == 10 and all(hit["row"] % 5 == 0 for hit in row) for row in hits)


def test_fingerprint_mismatch_is_refused(built: Path) -> None:
    with pytest.raises(InputError) as caught:
        RetrievalIndex.open(built, expected_fingerprint="fp-model-b")
    assert str(caught.value) == (
        "index was built with model fp-model-a, you passed model fp-model-b; "
        "rebuild the index or pass the model it was built with"
    )


_OK_ROW = b'{"study_id": "s0", "labels": {}}\n'


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        (IMAGES_FILE, b"garbage", "images.faiss is corrupt"),
        (TEXTS_FILE, None, "texts.faiss is missing"),
        (INFO_FILE, b"{not json", "index.json is not valid JSON"),
        (INFO_FILE, b'{"format": "other"}', "not a radlens index description"),
        (
            METADATA_FILE,
            b'{"study_id": "s0", "labels": {}}\n{"study_id": "s1", "lab',
            "line 2 is not a metadata row",
        ),
        # 60 rows, one without a usable study_id: search would fail on it later (KeyError 'study_id').
        (METADATA_FILE, _OK_ROW * 59 + b'{"labels": {}}\n', "line 60 is not a metadata row"),
        (METADATA_FILE, b'{"study_id": "", "labels": {}}\n' + _OK_ROW * 59, "line 1 is not a metadata row"),
        (METADATA_FILE, _OK_ROW + b'{"study_id": 7, "labels": {}}\n' + _OK_ROW * 58, "line 2 is not"),
        (METADATA_FILE, b'{"study_id": null, "labels": {}}\n' + _OK_ROW * 59, "line 1 is not a metadata row"),
        (METADATA_FILE, b'{"study_id": "s0", "labels": {}}\n', "holds 60 vectors"),
        (METADATA_FILE, b"\xff\xfe\x00", "not UTF-8"),
        (METADATA_FILE, b'{"study_id": "s0", "labels": {"Edema": "yes"}}\n' * 60, "invalid labels"),
    ],
)
def test_damaged_index_is_one_clear_line(built: Path, name: str, damage: bytes | None, expected: str) -> None:
    if damage is None:
        (built / name).unlink()
    else:
        (built / name).write_bytes(damage)
    with pytest.raises(InputError) as caught:
        RetrievalIndex.open(built)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert name in message and "radlens index build" in message
    assert SECRET not in message


def test_newer_format_and_missing_folder(built: Path, tmp_path: Path) -> None:
    info = json.loads((built / INFO_FILE).read_text())
    info["format_version"] = 99
    (built / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(InputError, match="upgrade radlens"):
        RetrievalIndex.open(built)
    with pytest.raises(InputError, match=r"index folder .* not found"):
        RetrievalIndex.open(tmp_path / "nowhere")


def test_create_refuses_bad_input_and_writes_nothing(tmp_path: Path, vectors: tuple) -> None:
    images, texts = vectors
    folder = tmp_path / "index"
    cases = [
        ((images, texts, _rows(59)), "59 metadata rows for 60 embeddings"),
        ((images, texts[:, :8], _rows(60)), "differ in shape"),
        ((images, texts, [{**row, "study_id": ""} for row in _rows(60)]), "row 0 has no study_id"),
        ((images, texts, [{**row, "study_id": ["s"]} for row in _rows(60)]), "row 0 has a study_id that"),
        ((images, texts, [{**row, "labels": {"Oedema": 1}} for row in _rows(60)]), "unknown label"),
        ((images, texts, [{**row, "labels": [1.0] * 13} for row in _rows(60)]), "has 13 labels"),
        ((images, texts, [{**row, "labels": {"Edema": 2}} for row in _rows(60)]), "not one of 1, 0, -1"),
        ((images, texts, [{**row, "extra": object()} for row in _rows(60)]), "cannot be stored as JSON"),
    ]
    for (image_vectors, text_vectors, rows), message in cases:
        with pytest.raises(InputError, match=message):
            RetrievalIndex.create(folder, image_vectors, text_vectors, rows, "fp", "dual_encoder")
        assert not folder.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either


def test_create_overwrite(built: Path, vectors: tuple) -> None:
    images, texts = vectors
    with pytest.raises(InputError, match="not empty"):
        RetrievalIndex.create(built, images, texts, _rows(60), "fp-model-b", "dual_encoder")
    assert RetrievalIndex.open(built).fingerprint == "fp-model-a"  # untouched
    RetrievalIndex.create(
        built, images[:10], texts[:10], _rows(10), "fp-model-b", "dual_encoder", overwrite=True
    )
    reopened = RetrievalIndex.open(built, expected_fingerprint="fp-model-b")
    assert len(reopened) == 10 and reopened.images.count == 10


def test_report_text_is_never_printed(
    tmp_path: Path, vectors: tuple, capfd: pytest.CaptureFixture[str]
) -> None:
    images, texts = vectors
    index = RetrievalIndex.create(tmp_path / "i", images, texts, _rows(60), "fp", "dual_encoder", kind="ivf")
    index.search_text_vectors(texts[:3], k=5, filters=SearchFilter(positive=("Edema",)))
    RetrievalIndex.open(tmp_path / "i").search_image_vectors(images[:3], k=5)
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err


def test_metadata_row_from_schema_records() -> None:
    study = StudyRecord(
        study_id="s9",
        subject_id="p9",
        images=[ImageRecord(image_id="i9", path=Path("a/b.jpg"), view_position="PA")],
        report="FINDINGS: raw",
        sections=ReportSections(findings="Clear lungs.", impression="Normal."),
        labels={"No Finding": 1.0},
        split="test",
    )
    row = metadata_row(study, study.images[0])
    assert row["image_path"] == "a/b.jpg" and row["view"] == "PA" and row["split"] == "test"
    assert row["findings"] == "Clear lungs." and row["report"] == "Clear lungs.\nNormal."
    assert row["labels"] == {"No Finding": 1.0}
    assert metadata_row(study)["image_id"] is None


def test_image_probe_example_tells_an_encoded_finding_from_an_absent_one(tmp_path: Path) -> None:
    """docs/examples/image_probe.py on two indexes whose image vectors carry Edema in one direction and
    nothing about Fracture: Edema's probe separates (AUC near 1), Fracture's is near chance."""
    rng = np.random.default_rng(0)
    direction = _normalise(rng.normal(size=(1, DIM)))[0]
    folders = []
    for name, count in (("fit", 400), ("score", 300)):
        edema, fracture = rng.random(count) < 0.4, rng.random(count) < 0.4
        vectors = _normalise(rng.normal(size=(count, DIM)) + 3.0 * edema[:, None] * direction)
        rows = []
        for i in range(count):
            labels = dict.fromkeys(CHEXPERT_LABELS, 0.0)
            labels["Edema"], labels["Fracture"] = float(edema[i]), float(fracture[i])
            rows.append({"study_id": f"{name}{i}", "labels": labels})
        RetrievalIndex.create(tmp_path / name, vectors, vectors, rows, "fp", "dual_encoder")
        folders.append(str(tmp_path / name))
    script = Path(__file__).parents[2] / "docs" / "examples" / "image_probe.py"
    done = subprocess.run([sys.executable, str(script), *folders], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    auc = {
        match[1].strip(): float(match[2])
        for match in re.finditer(r"^(.{28}) +\d+ +(\d\.\d{3})$", done.stdout, flags=re.MULTILINE)
    }
    assert auc["Edema"] > 0.95 and abs(auc["Fracture"] - 0.5) < 0.1, done.stdout
    assert "Cardiomegaly" in done.stdout and "skipped" in done.stdout  # no study has it: reported
    missing = subprocess.run(
        [sys.executable, str(script), folders[0], str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert (
        missing.returncode == 1 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    )
