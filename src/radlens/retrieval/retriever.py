"""The public search API: a loaded model and index answering many text and image queries.

    retriever = Retriever.load("phantom-index", "runs/dual", rerank_model_dir="runs/fusion-NE")
    hits = retriever.search_text("large left pleural effusion", k=10, rerank=20)
    if hits.notices: ...          # e.g. the query was longer than the model's token limit
    for hit in hits: print(hit.rank, hit.study_id, hit.score, hit.rerank_score)

Load once and keep the :class:`Retriever` (the web app holds one): loading reads the checkpoint and
the index; a query only embeds itself and searches. Queries are embedded by the model the index was
built with — :meth:`Retriever.load` refuses any other (fingerprint check).

Re-ranking (``rerank=N``): the best ``N`` candidates of the embedding search are scored by the fusion
model's image–text matching head, P(related | report, image), and reordered by it; ``score`` keeps the
embedding similarity, ``rerank_score`` holds the ITM probability. Candidates beyond ``N`` keep their
order after the re-ranked ones.

Query text is never logged and never put in an error message. Search calls are read-only: one
``Retriever`` may serve several threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radlens.core import InputError
from radlens.data.images import load_image
from radlens.data.transforms import ResizePolicy, resize
from radlens.retrieval._embedder import Embedder, load_embedder
from radlens.retrieval.index import RetrievalIndex, SearchFilter


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    ``row``: the hit's row number in the index (unique, where study and image ids may repeat outside
    MIMIC). ``score``: cosine similarity of the query and the hit (embedding search); ``rerank_score``: the
    fusion model's P(related) when the hit was re-ranked, else ``None``. ``labels`` maps each CheXpert
    observation to 1 / 0 / -1 / ``None`` (blank). ``impression``: the first line of the report's
    impression (else of its findings), for display.
    """

    rank: int
    score: float
    row: int
    study_id: str
    image_id: str | None
    labels: dict[str, float | None]
    view: str | None
    split: str | None
    impression: str
    rerank_score: float | None = None

    @property
    def positive_labels(self) -> list[str]:
        """The observations labelled positive (1), in CheXpert order."""
        return [name for name, value in self.labels.items() if value == 1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


class SearchResults(list[SearchHit]):
    """The hits of one query, best first, with ``notices`` for the user (e.g. the query was truncated).

    A plain ``list`` of :class:`SearchHit` otherwise. Notices never contain the query text.
    """

    def __init__(self, hits: Iterable[SearchHit] = (), notices: Sequence[str] = ()) -> None:
        super().__init__(hits)
        self.notices: tuple[str, ...] = tuple(notices)

    @property
    def truncated(self) -> bool:
        """Whether the query text was longer than a model's token limit (only its start was used)."""
        return any("truncated" in notice for notice in self.notices)


class Retriever:
    """An index with the model that built it (and optionally a fusion model for re-ranking)."""

    def __init__(self, index: RetrievalIndex, embedder: Embedder, reranker: Any | None = None) -> None:
        if index.fingerprint != embedder.fingerprint:
            raise InputError(
                f"index {index.folder} was built with another model (fingerprint "
                f"{index.fingerprint[:12]}…, this model {embedder.fingerprint[:12]}…)",
                "pass the checkpoint the index was built with, or rebuild the index",
            )
        self.index = index
        self.embedder = embedder
        self.reranker: Any = reranker  # a FusionModel (radlens.models is imported lazily)
        self._study_rows = {str(row["study_id"]): number for number, row in enumerate(index.rows)}
        self._image_rows = {
            str(row["image_id"]): number for number, row in enumerate(index.rows) if row.get("image_id")
        }

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike[str],
        model_dir: str | os.PathLike[str],
        rerank_model_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
    ) -> Retriever:
        """Open ``index_dir`` and load the model in ``model_dir``; both must belong together.

        ``rerank_model_dir`` is a fusion checkpoint for ``rerank=N``. Every problem (missing or corrupt
        index, wrong checkpoint type, a model other than the index's) is one :class:`InputError`.
        """
        from radlens.models.checkpoint import load_checkpoint

        index = RetrievalIndex.open(index_dir)  # first: a missing index fails before the slow model load
        embedder = load_embedder(model_dir, device)
        reranker = None
        if rerank_model_dir is not None:
            reranker = load_checkpoint(rerank_model_dir, expected_type="fusion").to(embedder.device)
        return cls(index, embedder, reranker)

    def __len__(self) -> int:
        return len(self.index)

    # --- queries --------------------------------------------------------------------------------------

    def search_text(
        self, text: str, k: int = 10, filters: SearchFilter | None = None, rerank: int = 0
    ) -> SearchResults:
        """The ``k`` indexed studies whose image best matches ``text`` (a report or a few words)."""
        return self.search_texts([text], k, filters, rerank)[0]

    def search_texts(
        self,
        texts: Sequence[str],
        k: int | Sequence[int] = 10,
        filters: SearchFilter | Sequence[SearchFilter | None] | None = None,
        rerank: int = 0,
    ) -> list[SearchResults]:
        """:meth:`search_text` for several queries, embedded in one batch (the web app batches the
        queries that arrive together). ``k`` and ``filters`` apply to every query, or give one per query.
        """
        count = len(texts)
        ks = [k] * count if isinstance(k, int) else list(k)
        chosen = [filters] * count if filters is None or isinstance(filters, SearchFilter) else list(filters)
        if len(ks) != count or len(chosen) != count:
            raise InputError(f"{count} queries but {len(ks)} k values and {len(chosen)} filters")
        for number, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                where = "" if count == 1 else f" (query {number + 1})"
                raise InputError(
                    f"the query text is empty{where}", "type a few words, e.g. 'left pleural effusion'"
                )
        for one_k in ks:
            self._check(one_k, rerank)
        if not texts:
            return []
        embeds, truncated = self.embedder.embed_texts(list(texts))
        vectors = embeds.numpy()
        results = []
        for number, text in enumerate(texts):
            hits = self.index.search_text_vectors(
                vectors[number : number + 1], max(ks[number], rerank), chosen[number]
            )[0]
            notices = [_truncation_notice(self.embedder.max_length)] if bool(truncated[number]) else []
            if rerank:
                hits, notice = self._rerank(hits[:rerank], hits[rerank:], text=text)
                notices.extend(notice)
            ranked = enumerate(hits[: ks[number]], start=1)
            results.append(SearchResults((_hit(row, rank) for rank, row in ranked), notices))
        return results

    def search_image(
        self,
        image: str | os.PathLike[str] | np.ndarray,
        k: int = 10,
        filters: SearchFilter | None = None,
        rerank: int = 0,
    ) -> SearchResults:
        """The ``k`` indexed studies whose report best matches ``image`` (a file path, or a grey
        (h, w) / colour (h, w, 3) array: uint8, or float in [0, 1])."""
        self._check(k, rerank)
        pixels = _as_grey(image)
        embeds = self.embedder.embed_images(self.embedder.pixels(pixels))
        hits = self.index.search_image_vectors(embeds.numpy(), max(k, rerank), filters)[0]
        notices: list[str] = []
        if rerank:
            hits, notices = self._rerank(hits[:rerank], hits[rerank:], image=pixels)
        return SearchResults((_hit(row, rank) for rank, row in enumerate(hits[:k], start=1)), notices)

    def study(self, study_id: str) -> dict[str, Any]:
        """The index's metadata row of ``study_id`` (ids, image path, view, split, labels, report)."""
        number = self._study_rows.get(str(study_id))
        if number is None:
            raise InputError(f"study {study_id} is not in the index {self.index.folder}")
        return dict(self.index.rows[number])

    def image_path(self, image_id: str) -> Path:
        """Where the indexed image ``image_id`` was read from (from the metadata; not checked on disk)."""
        number = self._image_rows.get(str(image_id))
        if number is None:
            raise InputError(f"image {image_id} is not in the index {self.index.folder}")
        return Path(self.index.rows[number]["image_path"])

    # --- helpers --------------------------------------------------------------------------------------

    def _check(self, k: int, rerank: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive number of results, got {k!r}")
        if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
            raise InputError(f"rerank must be 0 (off) or a positive number of candidates, got {rerank!r}")
        if rerank and self.reranker is None:
            raise InputError("re-ranking needs a fusion model", "load the Retriever with rerank_model_dir")

    @torch.inference_mode()
    def _rerank(
        self,
        candidates: list[dict[str, Any]],
        rest: list[dict[str, Any]],
        text: str | None = None,
        image: np.ndarray | None = None,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Reorder ``candidates`` by P(related) of (query text, hit image) or (hit report, query image)."""
        if not candidates:
            return rest, []
        model = self.reranker
        size = int(model.config.image_size)
        policy = ResizePolicy(mode="square", size=size)
        if text is not None:
            texts = [text] * len(candidates)
            images = [self._hit_image(row, policy) for row in candidates]
        else:
            assert image is not None
            texts = [str(row.get("report") or "") for row in candidates]
            images = [resize(image, policy)] * len(candidates)
        encoded = model.tokenize(texts)
        device = next(model.parameters()).device
        pixels = torch.from_numpy(np.stack(images)[:, None]).to(device)
        probability = model.itm_probability(
            encoded["input_ids"].to(device), encoded["attention_mask"].to(device), pixels
        )
        notices = []
        if text is not None and bool(encoded["truncated"][0]):
            notices.append(_truncation_notice(int(model.config.max_text_length), "re-ranking model"))
        scored = [
            {**row, "rerank_score": float(p)} for row, p in zip(candidates, probability.cpu(), strict=True)
        ]
        scored.sort(key=lambda row: -row["rerank_score"])  # stable: ties keep the embedding order
        return scored + rest, notices

    def _hit_image(self, row: dict[str, Any], policy: ResizePolicy) -> np.ndarray:
        path = row.get("image_path")
        if not path:
            raise InputError(f"indexed study {row['study_id']} has no image path; it cannot be re-ranked")
        return resize(load_image(path), policy)


def _truncation_notice(max_length: int, which: str = "model") -> str:
    return (
        f"the query was truncated: it is longer than the {which}'s limit of {max_length} tokens, "
        "so only its beginning was used"
    )


def _hit(row: dict[str, Any], rank: int) -> SearchHit:
    return SearchHit(
        rank=rank,
        score=float(row["score"]),
        row=int(row["row"]),
        study_id=str(row["study_id"]),
        image_id=row.get("image_id"),
        labels=dict(row.get("labels") or {}),
        view=row.get("view"),
        split=row.get("split"),
        impression=_first_line(row.get("impression") or row.get("findings") or row.get("report") or ""),
        rerank_score=row.get("rerank_score"),
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _as_grey(image: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
    """A query image as a float32 (h, w) array in [0, 1] (files go through :func:`load_image`)."""
    if isinstance(image, str | os.PathLike):
        return load_image(image)  # ImageDecodeError (an InputError) names the file and what is wrong
    if not isinstance(image, np.ndarray):
        raise InputError(f"the query image must be a file path or a numpy array, got {type(image).__name__}")
    array = image
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., :3]
        if array.shape[2] == 3:  # ITU-R 601 luma, as load_image does for colour files
            array = array.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            array = array[..., 0]
    if array.ndim != 2 or min(array.shape) < 8:
        raise InputError(
            f"the query image array has shape {image.shape}", "pass a grey (h, w) or colour (h, w, 3) image"
        )
    if image.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise InputError("the query image array must be uint8 or finite floats in [0, 1]")
    if array.min() < 0.0 or array.max() > 1.0:
        raise InputError("the query image array has float values outside [0, 1]", "scale it to [0, 1]")
    return array.astype(np.float32)
