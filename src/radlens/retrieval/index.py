"""Vector search over embeddings (FAISS) and the on-disk retrieval index a user builds.

:class:`VectorIndex` is a thin wrapper over one FAISS index with inner-product scores (cosine
similarity for the L2-normalised embeddings radlens models produce):

- ``"flat"`` — ``IndexFlatIP``: exact, no training; the default, and right up to ~100k vectors.
- ``"ivf"`` — ``IndexIVFFlat``: k-means partitions the vectors into ``nlist`` lists and a query scans
  the ``nprobe`` nearest lists. Approximate; for 100k+ vectors. Tune ``nprobe`` for recall vs. speed.
- ``"hnsw"`` — ``IndexHNSWFlat``: a navigable small-world graph. Approximate, fast queries, slow to
  build and ~``M``·8 bytes/vector extra memory. Tune ``ef_search``.

:class:`RetrievalIndex` is the folder ``radlens index build`` writes: two vector indexes (one per
modality) aligned with one metadata row per entry, and ``index.json`` recording which model built it.
The metadata holds report sections so results can be shown; it is the user's own data on their disk,
and it is never logged or printed by this module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import faiss
import numpy as np

from radlens.core.errors import InputError
from radlens.core.io import atomic_directory, atomic_write_file
from radlens.core.versions import collect_versions
from radlens.data.schema import CHEXPERT_LABELS, POSITIVE, ImageRecord, StudyRecord, normalize_label

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)

INDEX_FORMAT = "radlens-index"
INDEX_FORMAT_VERSION = 1
IMAGES_FILE, TEXTS_FILE, METADATA_FILE, INFO_FILE = (
    "images.faiss",
    "texts.faiss",
    "metadata.jsonl",
    "index.json",
)
_REBUILD_HINT = "rebuild it with `radlens index build`"
_faiss: Any = faiss


def _as_matrix(array: Any, what: str, dim: int | None = None) -> np.ndarray:
    """``array`` as a C-contiguous float32 (n, d) matrix; a 1-D array is one row."""
    matrix = np.asarray(array, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InputError(f"{what} must be a non-empty (n, dim) array, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise InputError(
            f"{what} have dimension {matrix.shape[1]} but the index holds dimension {dim}",
            "use embeddings from the model the index was built with",
        )
    if not np.isfinite(matrix).all():
        raise InputError(f"{what} contain NaN or infinite values", "check the model checkpoint")
    return np.ascontiguousarray(matrix)


def default_nlist(count: int) -> int:
    """IVF list count: about 4·sqrt(N), capped so every list gets >= 39 training vectors.

    39 points per centroid is FAISS's own minimum (it warns below it: k-means is unreliable).
    """
    return max(1, min(round(4 * math.sqrt(count)), count // 39))


class VectorIndex:
    """One FAISS index whose ids are row numbers of the vectors it was built from.

    Scores are inner products, higher is better. Build with :meth:`build`, read with :meth:`load`.
    """

    def __init__(self, index: faiss.Index, kind: IndexKind) -> None:
        self.index: Any = index  # Any: the concrete FAISS subclass's attributes are not in faiss's stubs
        self.kind: IndexKind = kind
        if kind == "ivf":
            # reconstruct() on IVF needs the id → list map. Made here, once, rather than on first use:
            # made lazily, two threads (web requests) could build it while the other reads it.
            # It costs 8 bytes a vector and milliseconds per million.
            faiss.extract_index_ivf(index).make_direct_map()

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        kind: IndexKind = "flat",
        *,
        nlist: int | None = None,
        nprobe: int = 32,
        train_size: int | None = None,
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        seed: int = 0,
    ) -> VectorIndex:
        """Index ``vectors`` (n, d); row ``i`` gets id ``i``.

        IVF: ``nlist`` lists (default :func:`default_nlist`), trained on ``train_size`` random rows
        (default: all, at most 256 per list — FAISS's own sampling cap), searched with ``nprobe``.
        HNSW: ``m`` links per node, ``ef_construction`` and ``ef_search`` beam widths.
        """
        if kind not in INDEX_KINDS:
            raise InputError(f"unknown index kind {kind!r}", f"choose one of {', '.join(INDEX_KINDS)}")
        # Checked before FAISS sees them: HNSW m < 2 aborts or crashes the process inside FAISS, and an
        # IVF nprobe of 0 builds an index whose every search fails.
        if kind == "hnsw":
            _check_at_least("m", m, 2)
            _check_at_least("ef_construction", ef_construction, 1)
            _check_at_least("ef_search", ef_search, 1)
        elif kind == "ivf":
            _check_at_least("nprobe", nprobe, 1)
        data = _as_matrix(vectors, "vectors")
        count, dim = data.shape
        index: faiss.Index
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        else:
            lists = nlist or default_nlist(count)
            if not 1 <= lists <= count:
                raise InputError(f"nlist must be between 1 and the number of vectors ({count}), got {lists}")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            sample = min(count, train_size or 256 * lists)
            if sample < lists:
                raise InputError(
                    f"train_size {sample} is below nlist {lists}", "train on at least nlist vectors"
                )
            rows = np.random.default_rng(seed).choice(count, size=sample, replace=False)
            index.train(data[np.sort(rows)] if sample < count else data)
            index.nprobe = min(nprobe, lists)
        index.add(data)
        return cls(index, kind)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.index.d)

    @property
    def count(self) -> int:
        """Number of indexed vectors."""
        return int(self.index.ntotal)

    @property
    def nprobe(self) -> int:
        """IVF lists scanned per query (IVF only)."""
        return int(self._ivf().nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = self._ivf()
        if not 1 <= value <= ivf.nlist:
            raise InputError(f"nprobe must be between 1 and nlist ({ivf.nlist}), got {value}")
        ivf.nprobe = int(value)

    @property
    def ef_search(self) -> int:
        """HNSW search beam width (HNSW only)."""
        return int(self._hnsw().hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if value < 1:
            raise InputError(f"ef_search must be at least 1, got {value}")
        self._hnsw().hnsw.efSearch = int(value)

    def _ivf(self) -> Any:
        if self.kind != "ivf":
            raise InputError(f"nprobe applies to IVF indexes, this one is {self.kind}")
        return self.index

    def _hnsw(self) -> Any:
        if self.kind != "hnsw":
            raise InputError(f"ef_search applies to HNSW indexes, this one is {self.kind}")
        return self.index

    def _params(self, selector: Any) -> Any:
        # FAISS search parameters replace the index's own settings, so carry nprobe/efSearch over.
        # (_faiss: faiss's stubs lack these keyword constructors.)
        if self.kind == "ivf":
            return _faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe)
        if self.kind == "hnsw":
            return _faiss.SearchParametersHNSW(sel=selector, efSearch=self.index.hnsw.efSearch)
        return _faiss.SearchParameters(sel=selector)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each query: ``(scores, ids)``, both (n_queries, k'), best first.

        ``k' = min(k, candidates)``. ``allowed`` restricts results to those row ids (a FAISS
        ``IDSelector``). Approximate kinds can find fewer than ``k'`` rows (a restrictive filter that
        HNSW's graph walk rarely meets, IVF lists probed holding fewer than ``k`` rows); such queries
        are answered exactly over the candidate rows instead, so results are never silently short.
        Any slot still unfilled would hold id ``-1`` and score ``-inf`` (sorted last).
        """
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        data = _as_matrix(queries, "queries", self.dim)
        selector = None
        candidates = self.count
        if allowed is not None:
            allowed = np.unique(np.asarray(allowed, dtype=np.int64))
            if allowed.size and (allowed[0] < 0 or allowed[-1] >= self.count):
                raise InputError(f"allowed ids must be row numbers in [0, {self.count})")
            candidates = int(allowed.size)
            if candidates == 0:
                return np.empty((len(data), 0), np.float32), np.empty((len(data), 0), np.int64)
            if candidates < self.count:
                selector = faiss.IDSelectorBatch(allowed)
        width = min(k, candidates)
        if selector is None:
            scores, ids = self.index.search(data, width)
        else:
            scores, ids = self.index.search(data, width, params=self._params(selector))
        short = (ids < 0).any(axis=1)
        if short.any() and self.kind != "flat":
            rows = allowed if allowed is not None else np.arange(self.count)
            scores[short], ids[short] = _exact_top(data[short], self.vectors(rows), rows, width)
        scores[ids < 0] = -np.inf
        return scores, ids

    def vectors(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """The stored vectors (float32, one row each) of row numbers ``rows``, or of all rows for ``None``.

        Exact for every kind: an IVF index stores its vectors whole too (IVF-Flat), and its direct map
        is made when the index is constructed.
        """
        ids = np.ascontiguousarray(np.arange(self.count) if rows is None else rows, dtype=np.int64).reshape(
            -1
        )
        if ids.size and (ids.min() < 0 or ids.max() >= self.count):
            raise IndexError(f"row numbers must lie in [0, {self.count}); got {ids.min()}..{ids.max()}")
        return np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32).reshape(len(ids), self.dim)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to the file ``path`` (via a temporary sibling and an atomic rename)."""
        return atomic_write_file(path, lambda tmp: faiss.write_index(self.index, str(tmp)))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read an index written by :meth:`save`; :class:`InputError` if missing or not readable."""
        source = Path(path)
        if not source.is_file():
            raise InputError(f"index file {source} is missing", _REBUILD_HINT)
        try:
            index = faiss.read_index(str(source))
        except (RuntimeError, MemoryError) as exc:  # FAISS reports every read problem as RuntimeError
            raise InputError(f"index file {source} is corrupt or not a FAISS index", _REBUILD_HINT) from exc
        kind = _kind_of(index)
        if kind is None or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise InputError(f"index file {source} holds an index type radlens does not use", _REBUILD_HINT)
        return cls(index, kind)


def _check_at_least(name: str, value: Any, minimum: int) -> None:
    """:class:`InputError` unless ``value`` is a whole number (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be a whole number of at least {minimum}, got {value!r}")


def _kind_of(index: faiss.Index) -> IndexKind | None:
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return None


def _exact_top(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``queries`` against ``vectors`` (whose row ids are ``ids``), best first."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, top, axis=1), ids[top]


@dataclass(frozen=True)
class SearchFilter:
    """Which index rows a search may return. Empty fields do not filter.

    ``positive``: every listed CheXpert label must be positive (== 1) for the row.
    ``views`` / ``splits``: the row's view position / split must be one of these (case-insensitive).
    """

    positive: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("positive", "views", "splits"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        unknown = [name for name in self.positive if name not in CHEXPERT_LABELS]
        if unknown:
            raise InputError(
                f"unknown label {unknown[0]!r} in the filter", f"use one of: {', '.join(CHEXPERT_LABELS)}"
            )

    def mask(self, labels: np.ndarray, views: np.ndarray, splits: np.ndarray) -> np.ndarray:
        """Boolean mask over rows given their (n, 14) labels and upper-cased views / lower-cased splits."""
        keep = np.ones(len(labels), dtype=bool)
        for name in self.positive:
            keep &= labels[:, CHEXPERT_LABELS.index(name)] == POSITIVE
        if self.views:
            keep &= np.isin(views, [view.upper() for view in self.views])
        if self.splits:
            keep &= np.isin(splits, [split.lower() for split in self.splits])
        return keep


def metadata_row(study: StudyRecord, image: ImageRecord | None = None) -> dict[str, Any]:
    """The metadata row for one study (or one of its images): ids, path, view, split, labels, report."""
    sections = study.sections
    return {
        "study_id": study.study_id,
        "subject_id": study.subject_id,
        "image_id": image.image_id if image else None,
        "image_path": str(image.path) if image else None,
        "view": image.view_position if image else None,
        "split": study.split,
        "labels": dict(study.labels),
        "findings": sections.findings if sections else None,
        "impression": sections.impression if sections else None,
        "report": study.report_text(),
    }


def _normalise_row(row: Mapping[str, Any], number: int) -> dict[str, Any]:
    """A JSON-ready copy of a metadata row with ``labels`` as a full name → 1/0/-1/None mapping."""
    if not isinstance(row, Mapping) or not row.get("study_id"):
        raise InputError(f"metadata row {number} has no study_id", "give every row a study_id")
    study_id = row["study_id"]
    if isinstance(study_id, bool) or not isinstance(study_id, str | int | np.integer):
        raise InputError(f"metadata row {number} has a study_id that is not text or a whole number")
    clean = {key: str(value) if isinstance(value, os.PathLike) else value for key, value in row.items()}
    clean["study_id"] = str(study_id)  # stored as text: reading an index requires a text study_id
    raw = clean.get("labels")
    if raw is None:
        raw = {}
    elif not isinstance(raw, Mapping):
        raw = dict(zip(CHEXPERT_LABELS, _label_list(raw, number), strict=True))
    unknown = set(raw) - set(CHEXPERT_LABELS)
    if unknown:
        raise InputError(f"metadata row {number} has unknown label {sorted(unknown)[0]!r}")
    try:
        clean["labels"] = {name: normalize_label(raw.get(name)) for name in CHEXPERT_LABELS}
    except ValueError as exc:
        raise InputError(f"metadata row {number}: {exc}") from exc
    return clean


def _label_list(raw: Any, number: int) -> list[Any]:
    values = list(np.asarray(raw, dtype=object).ravel())
    if len(values) != len(CHEXPERT_LABELS):
        raise InputError(f"metadata row {number} has {len(values)} labels, expected {len(CHEXPERT_LABELS)}")
    return values


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"a {type(value).__name__} value cannot be stored as JSON")


def _json_line(row: dict[str, Any], number: int) -> str:
    try:
        return json.dumps(row, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"metadata row {number}: {exc}", "store only text, numbers, lists and mappings"
        ) from exc


class RetrievalIndex:
    """A built retrieval index: image and text vectors aligned with one metadata row per entry.

    Folder layout: ``images.faiss``, ``texts.faiss`` (row ``i`` of each is metadata row ``i``),
    ``metadata.jsonl`` (one JSON object per line), ``index.json`` (format, model, counts, versions).
    """

    def __init__(
        self, folder: Path, info: dict[str, Any], images: VectorIndex, texts: VectorIndex, rows: list[dict]
    ) -> None:
        self.folder = folder
        self.info = info
        self.images = images
        self.texts = texts
        self.rows = rows
        self._labels: np.ndarray = np.array(
            [
                [
                    np.nan if row["labels"].get(name) is None else row["labels"][name]
                    for name in CHEXPERT_LABELS
                ]
                for row in rows
            ],
            dtype=np.float64,
        ).reshape(len(rows), len(CHEXPERT_LABELS))
        self._views = np.array([str(row.get("view") or "").upper() for row in rows], dtype=object)
        self._splits = np.array([str(row.get("split") or "").lower() for row in rows], dtype=object)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        """The CheXpert labels of every row: float64 (rows × 14, in :data:`CHEXPERT_LABELS` order), 1 / 0 /
        -1 with NaN where blank. A read-only view; index it with row numbers."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def views(self) -> list[str]:
        """The distinct view positions of the rows (upper case, sorted): what ``SearchFilter.views`` can
        select."""
        return sorted({view for view in self._views if view})

    @property
    def splits(self) -> list[str]:
        """The distinct splits of the rows (lower case, sorted): what ``SearchFilter.splits`` can select."""
        return sorted({split for split in self._splits if split})

    def matching_rows(self, filters: SearchFilter) -> np.ndarray:
        """The row numbers (int64, ascending) that ``filters`` lets a search return."""
        return np.flatnonzero(filters.mask(self._labels, self._views, self._splits))

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model whose embeddings the index holds."""
        return str(self.info["model_fingerprint"])

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike[str],
        image_vectors: np.ndarray,
        text_vectors: np.ndarray,
        metadata_rows: Sequence[Mapping[str, Any]],
        fingerprint: str,
        model_type: str,
        kind: IndexKind = "flat",
        overwrite: bool = False,
        **params: Any,
    ) -> RetrievalIndex:
        """Build both vector indexes (``kind``, ``params`` as in :meth:`VectorIndex.build`) and write the
        folder atomically: an existing index is replaced only when the new one is complete."""
        images = _as_matrix(image_vectors, "image embeddings")
        texts = _as_matrix(text_vectors, "text embeddings")
        if images.shape != texts.shape:
            raise InputError(
                f"image embeddings {images.shape} and text embeddings {texts.shape} differ in shape"
            )
        if len(metadata_rows) != len(images):
            raise InputError(
                f"{len(metadata_rows)} metadata rows for {len(images)} embeddings; they must match"
            )
        rows = [_normalise_row(row, number) for number, row in enumerate(metadata_rows)]
        lines = [_json_line(row, number) for number, row in enumerate(rows)]
        image_index = VectorIndex.build(images, kind, **params)
        text_index = VectorIndex.build(texts, kind, **params)
        info = _info(fingerprint, model_type, kind, len(rows), images.shape[1])
        with atomic_directory(folder, overwrite) as tmp:
            image_index.save(tmp / IMAGES_FILE)
            text_index.save(tmp / TEXTS_FILE)
            (tmp / METADATA_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return cls(Path(folder), info, image_index, text_index, rows)

    @classmethod
    def open(cls, folder: str | os.PathLike[str], expected_fingerprint: str | None = None) -> RetrievalIndex:
        """Open an index folder; with ``expected_fingerprint``, refuse one built by another model.

        Every problem (missing folder or file, unreadable file, inconsistent counts, other model) is
        one :class:`InputError` naming the file and what to do.
        """
        root = Path(folder)
        if not root.is_dir():
            raise InputError(f"index folder {root} not found", "build one with `radlens index build`")
        info = _read_info(root / INFO_FILE)
        built_with = str(info["model_fingerprint"])
        if expected_fingerprint is not None and expected_fingerprint != built_with:
            raise InputError(
                f"index was built with model {built_with}, you passed model {expected_fingerprint}; "
                "rebuild the index or pass the model it was built with"
            )
        images = VectorIndex.load(root / IMAGES_FILE)
        texts = VectorIndex.load(root / TEXTS_FILE)
        rows = _read_metadata(root / METADATA_FILE)
        for name, index in ((IMAGES_FILE, images), (TEXTS_FILE, texts)):
            if index.count != len(rows) or index.dim != info["embedding_dim"]:
                raise InputError(
                    f"{root / name} holds {index.count} vectors of dimension {index.dim}, but "
                    f"{INFO_FILE} and {METADATA_FILE} describe {len(rows)} of dimension {info['embedding_dim']}",
                    _REBUILD_HINT,
                )
        try:
            return cls(root, info, images, texts, rows)
        except (TypeError, ValueError) as exc:  # a label value that is not a number
            raise InputError(f"index file {root / METADATA_FILE} has invalid labels", _REBUILD_HINT) from exc

    def search_text_vectors(
        self, queries: np.ndarray, k: int = 10, filters: SearchFilter | None = None
    ) -> list[list[dict[str, Any]]]:
        """Text → image retrieval: for each text-query embedding, the ``k`` best rows by image score."""
        return self._search(self.images, queries, k, filters)

    def search_image_vectors(
        self, queries: np.ndarray, k: int = 10, filters: SearchFilter | None = None
    ) -> list[list[dict[str, Any]]]:
        """Image → report retrieval: for each image-query embedding, the ``k`` best rows by report score."""
        return self._search(self.texts, queries, k, filters)

    def _search(
        self, index: VectorIndex, queries: np.ndarray, k: int, filters: SearchFilter | None
    ) -> list[list[dict[str, Any]]]:
        """Result rows per query: the metadata row plus ``row`` (id), ``rank`` (1 = best) and ``score``."""
        allowed = None
        if filters is not None:
            rows = self.matching_rows(filters)
            allowed = None if len(rows) == len(self) else rows
        scores, ids = index.search(queries, k, allowed)
        results = []
        for query_scores, query_ids in zip(scores, ids, strict=True):
            hits = [
                {**self.rows[row], "row": int(row), "rank": rank, "score": float(score)}
                for rank, (score, row) in enumerate(zip(query_scores, query_ids, strict=True), start=1)
                if row >= 0
            ]
            results.append(hits)
        return results


def _info(fingerprint: str, model_type: str, kind: str, count: int, dim: int) -> dict[str, Any]:
    from radlens import __version__

    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "model_fingerprint": fingerprint,
        "model_type": model_type,
        "embedding_dim": dim,
        "kinds": {"images": kind, "texts": kind},
        "counts": {"images": count, "texts": count, "metadata": count},
        "metadata_file": METADATA_FILE,
        "radlens_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": collect_versions(),
    }


def _read_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"index file {path} is missing", _REBUILD_HINT)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"index file {path} is not valid JSON", _REBUILD_HINT) from exc
    required = ("format", "format_version", "model_fingerprint", "model_type", "embedding_dim")
    if (
        not isinstance(info, dict)
        or info.get("format") != INDEX_FORMAT
        or any(k not in info for k in required)
    ):
        raise InputError(f"{path} is not a radlens index description", _REBUILD_HINT)
    if not isinstance(info["format_version"], int) or info["format_version"] > INDEX_FORMAT_VERSION:
        raise InputError(
            f"{path} has index format {info['format_version']!r}; this radlens reads up to "
            f"{INDEX_FORMAT_VERSION}",
            f"upgrade radlens or {_REBUILD_HINT}",
        )
    return info


def _read_metadata(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"index file {path} is missing", _REBUILD_HINT)
    rows = []
    number = 0
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):  # noqa: B007 (number is used on failure)
                if line.strip():
                    row = json.loads(line)
                    if (
                        not isinstance(row, dict)
                        or not isinstance(row.get("labels"), dict)
                        or not isinstance(row.get("study_id"), str)
                        or not row["study_id"]
                    ):
                        raise ValueError("not a metadata row")
                    rows.append(row)
    except UnicodeDecodeError as exc:
        raise InputError(f"index file {path} is corrupt (not UTF-8 text)", _REBUILD_HINT) from exc
    except ValueError as exc:  # JSONDecodeError is a ValueError
        # The line itself holds report text: name the file and line number, never the content.
        raise InputError(
            f"index file {path} is corrupt (line {number} is not a metadata row)", _REBUILD_HINT
        ) from exc
    return rows
