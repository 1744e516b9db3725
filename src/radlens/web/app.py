"""The radlens web service: search X-rays by report and reports by X-ray, and see why they match.

``create_app(retriever, settings)`` returns a FastAPI app serving

- the JSON API under ``/api`` (OpenAPI document at ``/api/openapi.json``): ``POST /api/search``,
  ``POST /api/search/image``, ``GET /api/studies/{row}``, ``GET /api/images/{row}``,
  ``POST /api/explain``, ``GET /api/options``, ``GET /api/health``;
- images and studies are addressed by index row number (:mod:`radlens.web.schemas` says why): a hit
  carries its ``row``, and searches read the rows straight from the index so the row is exact even
  where image or study ids repeat;
- the page at ``/`` (``static/``: plain HTML, CSS and JavaScript, nothing loaded from elsewhere).

Model work (embedding queries, explanations) and image decoding run on worker threads behind bounded
queues (:mod:`radlens.web._queue`); a full queue answers 503 with ``Retry-After``. Every error is JSON
with ``detail`` in plain words (and ``errors`` naming the fields for 422). Neither query text nor report
text is ever logged: the access log holds ids, route templates, statuses and durations only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import (
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi import (
    Path as PathParam,
)
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from radlens import __version__
from radlens.core import InputError
from radlens.data.images import load_image
from radlens.data.schema import CHEXPERT_LABELS
from radlens.data.transforms import resize
from radlens.retrieval import SearchFilter, SearchResults
from radlens.web._explain import MatchExplainer, data_url
from radlens.web._images import ImageStore, UploadRejected, decode_upload
from radlens.web._middleware import BodyTooLarge, ServiceMiddleware
from radlens.web._queue import BatchingQueue, InferenceQueue, QueueFull
from radlens.web.schemas import (
    DEFAULT_K,
    EXPLAIN_METHODS,
    MAX_K,
    MAX_QUERY_CHARS,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    Health,
    Hit,
    Label,
    Options,
    SearchRequest,
    SearchResponse,
    Split,
    StudyDetail,
    StudyImage,
    View,
    WordScore,
)

STATIC_DIR = Path(__file__).with_name("static")
#: Largest JSON body accepted (a query is at most 2,000 characters; this leaves room for escaping).
JSON_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Settings:
    """Service limits and sizes.

    ``max_upload_mb``: largest upload (413 above). ``max_pixels``: uploads with more pixels are refused
    from their header, before decoding (422). ``queue_size``: requests admitted per queue, running and
    waiting (503 + Retry-After beyond). ``max_batch``: most text queries embedded in one batch.
    ``cors_origins``: origins allowed to call the API from a browser (none: CORS off). ``thumb_side`` /
    ``full_side``: longest side of thumbnails / full images served; ``image_cache_mb``: memory for the
    PNGs kept (least recently used go first).
    """

    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    queue_size: int = 16
    max_batch: int = 16
    cors_origins: tuple[str, ...] = ()
    thumb_side: int = 192
    full_side: int = 1024
    image_cache_mb: float = 128.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (404, "unknown row, or a row without an image"),
        (413, "upload too large"),
        (422, "invalid request (the fields at fault are named)"),
        (503, "busy: retry after the number of seconds in Retry-After"),
    )
}


def create_app(retriever: Any, settings: Settings | None = None) -> FastAPI:
    """The web app over a loaded :class:`~radlens.retrieval.Retriever` (kept for the app's lifetime)."""
    settings = settings or Settings()
    service = _Service(retriever, settings)
    app = FastAPI(
        title="radlens",
        version=__version__,
        description="Search chest X-rays by report and reports by X-ray, with explanations. "
        "Research use only — not for diagnosis.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the service stays self-contained
        redoc_url=None,
    )
    service.install(app)
    _add_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    upload_limit = settings.max_upload_bytes

    def body_limit(path: str) -> tuple[int, int]:
        if path == "/api/search/image":  # room for the multipart envelope; the file itself is checked too
            return upload_limit + 64 * 1024, upload_limit
        return JSON_BODY_LIMIT, JSON_BODY_LIMIT

    app.add_middleware(ServiceMiddleware, body_limit=body_limit)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    app.state.service = service
    return app


class _Service:
    """The retriever, the queues, caches and the endpoints that use them."""

    def __init__(self, retriever: Any, settings: Settings) -> None:
        self.retriever = retriever
        self.settings = settings
        # One model worker; text queries waiting at the same moment are embedded as one batch.
        self.search_queue: BatchingQueue[_Query, SearchResults] = BatchingQueue(
            "search", settings.queue_size, self._search_batch, max_batch=settings.max_batch
        )
        self.explain_queue = InferenceQueue("explain", settings.queue_size, 1)
        self.image_queue = InferenceQueue("image", max(settings.queue_size, 32), 2)
        self.images = ImageStore(settings.thumb_side, settings.full_side, settings.image_cache_mb)
        self._explainer: MatchExplainer | None = None
        # Row numbers, not ids, address images and studies: ids need not be unique (see schemas).
        self.rows: list[dict[str, Any]] = retriever.index.rows
        self.study_rows: dict[str, list[int]] = {}
        for number, row in enumerate(self.rows):
            self.study_rows.setdefault(str(row["study_id"]), []).append(number)
        self.views, self.splits = retriever.index.views, retriever.index.splits

    # --- endpoints ---------------------------------------------------------------------------------

    def install(self, app: FastAPI) -> None:
        """Add the endpoints under ``/api``. Registered on the app itself (not an included router), so
        every route keeps its full template, which the access log records."""

        def route(path: str, endpoint: Any, method: str, **options: Any) -> None:
            responses = {**_ERRORS, **options.pop("responses", {})}
            app.add_api_route(f"/api{path}", endpoint, methods=[method], responses=responses, **options)

        route("/health", self.health, "GET", response_model=Health)
        route("/options", self.options, "GET", response_model=Options)
        route("/search", self.search, "POST", response_model=SearchResponse)
        route("/search/image", self.search_image, "POST", response_model=SearchResponse)
        route("/studies/{row}", self.study, "GET", response_model=StudyDetail)
        route(
            "/images/{row}",
            self.image,
            "GET",
            response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the image as PNG"}},
        )
        route("/explain", self.explain, "POST", response_model=ExplainResponse)

    async def health(self) -> Health:
        """Liveness, version and what the service holds."""
        queues = {q.name: q.stats() for q in (self.search_queue, self.explain_queue, self.image_queue)}
        return Health.model_validate(
            {
                "status": "ok",
                "version": __version__,
                "studies": len(self.retriever.index),
                "model_type": str(self.retriever.index.info.get("model_type", "unknown")),
                "queues": queues,
            }
        )

    async def options(self) -> Options:
        """Filter values present in the index, explanation methods and limits (the page's controls)."""
        return Options(
            labels=list(CHEXPERT_LABELS),
            views=self.views,
            splits=self.splits,
            methods=list(EXPLAIN_METHODS),
            max_query_chars=MAX_QUERY_CHARS,
            max_k=MAX_K,
            default_k=DEFAULT_K,
            max_upload_mb=self.settings.max_upload_mb,
            studies=len(self.retriever.index),
        )

    async def search(self, request: SearchRequest) -> SearchResponse:
        """Text → image: the studies whose image best matches the text."""
        start = time.perf_counter()
        filters = _filters(request.filters.labels, request.filters.views, request.filters.splits)
        results = await self.search_queue.submit(_Query(request.k, filters, text=request.text))
        return _response(results, self.rows, start)

    async def search_image(
        self,
        file: Annotated[UploadFile, File(description="a PNG, JPEG or DICOM image")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = DEFAULT_K,
        labels: Annotated[list[Label] | None, Form()] = None,
        views: Annotated[list[View] | None, Form()] = None,
        splits: Annotated[list[Split] | None, Form()] = None,
    ) -> SearchResponse:
        """Image → report: the studies whose report best matches the uploaded image."""
        start = time.perf_counter()
        filters = _filters(labels or [], views or [], splits or [])
        data = await file.read(self.settings.max_upload_bytes + 1)
        if len(data) > self.settings.max_upload_bytes:
            raise BodyTooLarge(self.settings.max_upload_bytes, "the image")
        pixels = await self.image_queue.run(self._upload_pixels, data, file.filename)
        results = await self.search_queue.submit(_Query(k, filters, image=pixels))
        return _response(results, self.rows, start)

    async def study(
        self, row: Annotated[int, PathParam(ge=0, description="any index row of the study")]
    ) -> StudyDetail:
        """The study of index row ``row``: its images (one per row), report sections and labels."""
        first = self._row(row)
        numbers = self.study_rows[str(first["study_id"])]
        labels = dict(first.get("labels") or {})
        images = [
            StudyImage(
                row=n,
                image_id=_text_or_none(self.rows[n].get("image_id")),
                view=self.rows[n].get("view"),
                **_image_urls(n),
            )
            for n in numbers
            if self.rows[n].get("image_path")
        ]
        return StudyDetail(
            study_id=str(first["study_id"]),
            subject_id=_text_or_none(first.get("subject_id")),
            split=first.get("split"),
            labels=labels,
            positive=[name for name, value in labels.items() if value == 1],
            uncertain=[name for name, value in labels.items() if value == -1],
            findings=first.get("findings"),
            impression=first.get("impression"),
            report=str(first.get("report") or ""),
            images=images,
        )

    async def image(
        self,
        row: Annotated[int, PathParam(ge=0, description="the index row of the image")],
        size: Annotated[str, Query(pattern="^(thumb|full)$")] = "full",
    ) -> Response:
        """The image of index row ``row`` as PNG (``size=thumb``: at most 192 px a side); cached."""
        path = self._image_path(row)
        try:
            png = await self.image_queue.run(self.images.png, path, size)
        except InputError as exc:  # the file is gone or unreadable on the server
            raise HTTPException(404, detail=f"the image of row {row} cannot be read on the server") from exc
        return Response(png, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    async def explain(self, request: ExplainRequest) -> ExplainResponse:
        """Why the text matches the image: a heatmap over the image and a score per word of the text."""
        start = time.perf_counter()
        path = self._image_path(request.row)
        row = self.rows[request.row]
        text = request.text
        if text is None:
            text = str(row.get("report") or "")
            if not text.strip():
                raise InputError(f"row {request.row} has no report to explain", "pass text")
        pixels = await self.image_queue.run(self._model_pixels, path)
        result = await self.explain_queue.run(self._explain, text, pixels, request.method)
        return ExplainResponse(
            method=request.method,
            row=request.row,
            image_id=_text_or_none(row.get("image_id")),
            text_source="query" if request.text is not None else "report",
            text=text,
            score=result.score,
            signed=result.signed,
            heatmap_png=data_url(result.heatmap_png),
            heatmap_max=result.heatmap_max,
            words=[WordScore(start=s, end=e, score=v) for s, e, v in result.words],
            truncated=result.truncated,
            took_ms=round((time.perf_counter() - start) * 1000, 1),
        )

    # --- helpers -----------------------------------------------------------------------------------

    def _row(self, number: int) -> dict[str, Any]:
        """Metadata row ``number`` of the index; 404 when there is none."""
        if not 0 <= number < len(self.rows):
            raise HTTPException(404, detail=f"no row {number} in this index (it has {len(self.rows)})")
        return self.rows[number]

    def _image_path(self, number: int) -> Path:
        """Where row ``number``'s image was indexed from (from the index only, never from a request)."""
        path = self._row(number).get("image_path")
        if not path:
            raise HTTPException(404, detail=f"row {number} of this index has no image")
        return Path(path)

    def _upload_pixels(self, data: bytes, filename: str | None) -> np.ndarray:
        """An upload decoded and already resized to the model's input: a waiting query holds S×S
        pixels, not the full film (a 40 MP upload is 160 MB as float32, times the queue's capacity)."""
        return resize(
            decode_upload(data, filename, self.settings.max_pixels), self.retriever.embedder.policy()
        )

    def _model_pixels(self, path: Path) -> np.ndarray:
        try:
            return resize(load_image(path), self.retriever.embedder.policy())
        except InputError as exc:
            raise HTTPException(404, detail="the image cannot be read on the server") from exc

    def _search_batch(self, queries: list[_Query]) -> list[SearchResults | Exception]:
        """Answer a batch of queries on the worker thread: the texts embedded in one call.

        A query whose own input is bad must not fail the others: when the batched call raises, the
        texts are answered one by one so each caller gets its own result or error.
        """
        results: list[SearchResults | Exception] = [InputError("no query")] * len(queries)
        texts = [(number, q) for number, q in enumerate(queries) if q.text is not None]
        try:
            found = self.retriever.search_texts(
                [str(q.text) for _, q in texts], [q.k for _, q in texts], [q.filters for _, q in texts]
            )
            for (number, _), result in zip(texts, found, strict=True):
                results[number] = result
        except Exception:
            for number, query in texts:
                results[number] = _attempt(
                    self.retriever.search_text, str(query.text), query.k, query.filters
                )
        for number, query in enumerate(queries):
            if query.image is not None:
                results[number] = _attempt(self.retriever.search_image, query.image, query.k, query.filters)
        return results

    def _explain(self, text: str, pixels: np.ndarray, method: str) -> Any:
        if self._explainer is None:  # one explain worker: no race; the copy is made on first use
            self._explainer = MatchExplainer(self.retriever.embedder)
        return self._explainer.explain(text, pixels, method)


@dataclass(frozen=True)
class _Query:
    """One search for the batching queue: a text or an image, with its own ``k`` and filters."""

    k: int
    filters: SearchFilter | None
    text: str | None = None
    image: np.ndarray | None = None


def _attempt(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or the exception it raised (for one query of a batch)."""
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def _filters(labels: Sequence[str], views: Sequence[str], splits: Sequence[str]) -> SearchFilter | None:
    if not (labels or views or splits):
        return None
    return SearchFilter(positive=tuple(labels), views=tuple(views), splits=tuple(splits))


def _image_urls(row: int) -> dict[str, str]:
    """The URLs of row ``row``'s image: the only form image URLs take (documented in docs/web.md)."""
    return {"url": f"/api/images/{row}", "thumbnail_url": f"/api/images/{row}?size=thumb"}


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _response(results: SearchResults, rows: Sequence[dict[str, Any]], start: float) -> SearchResponse:
    """The API's answer for one query's hits; URLs name each hit's index row (``rows``: the metadata)."""
    hits = []
    for hit in results:
        urls = _image_urls(hit.row) if rows[hit.row].get("image_path") else None
        hits.append(
            Hit(
                rank=hit.rank,
                score=hit.score,
                row=hit.row,
                study_id=hit.study_id,
                image_id=hit.image_id,
                view=hit.view,
                split=hit.split,
                positive=[name for name, value in hit.labels.items() if value == 1],
                uncertain=[name for name, value in hit.labels.items() if value == -1],
                impression=hit.impression,
                study_url=f"/api/studies/{hit.row}",
                thumbnail_url=urls["thumbnail_url"] if urls else None,
                image_url=urls["url"] if urls else None,
            )
        )
    took = round((time.perf_counter() - start) * 1000, 1)
    return SearchResponse(results=hits, notices=list(results.notices), took_ms=took)


# --- errors: JSON with ``detail`` in plain words ---------------------------------------------------


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "filters", "labels", 0)`` → ``filters.labels[0]`` (where in the request)."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form")]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or str(loc[0] if loc else "request")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                return JSONResponse(
                    {
                        "detail": "the request body is not valid JSON",
                        "hint": "send a JSON object",
                        "errors": [{"field": "body", "message": "invalid JSON"}],
                    },
                    status_code=422,
                )
            # Only the location and pydantic's message: never echo the input (it may be a report).
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            errors.append({"field": _field(error.get("loc", ())), "message": message})
        first = errors[0] if errors else {"field": "request", "message": "invalid"}
        detail = f"{first['field']}: {first['message']}"
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI/Starlette could not parse the body (not UTF-8, broken multipart)
            return JSONResponse(
                {
                    "detail": "the request body could not be read (malformed JSON or form data)",
                    "hint": "send UTF-8 JSON, or a multipart form with a file field",
                    "errors": [{"field": "body", "message": str(exc.detail)}],
                },
                status_code=422,
            )
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UploadRejected)
    async def rejected(_: Request, exc: UploadRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=exc.status)

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        # radlens's InputErrors never quote query or report text (the retriever guarantees it).
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=422)

    @app.exception_handler(QueueFull)
    async def busy(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {
                "detail": f"the server is busy ({exc.name} queue full); try again in {exc.retry_after} s",
                "hint": "wait and retry",
            },
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )
