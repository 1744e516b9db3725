"""Request and response models of the web API (pydantic): validation and the OpenAPI document.

Limits live in the request models, so a query that is too long, a ``k`` out of range or an unknown label
is refused with 422 naming the field before anything runs.

Studies and images are addressed by **index row number** (``row``: 0 to the index size − 1), the one key
unique per indexed image: outside MIMIC an ``image_id`` is often just the file name's stem (``s00/frontal.jpg``
and ``s01/frontal.jpg`` are both ``frontal``) and a ``study_id`` may be a path with ``/``. A row number
is a whole number, so no key can smuggle a path; it is stable for as long as the index is not rebuilt.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from radlens.data.schema import CHEXPERT_LABELS

#: Longest query text accepted (characters). Reports are rarely longer; the model reads ~128 tokens.
MAX_QUERY_CHARS = 2000
#: Most results one search may ask for.
MAX_K = 50
DEFAULT_K = 12
#: A row number of the index: what image, study and explanation requests name.
RowNumber = Annotated[int, Field(ge=0)]

Label = Literal[CHEXPERT_LABELS]  # type: ignore[valid-type]  # 14 names, checked by pydantic
Split = Literal["train", "validate", "test"]
View = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_ ]{1,32}$")]
ExplainMethod = Literal["gradcam_pp", "gradcam", "integrated_gradients", "smoothgrad", "gradient"]
#: Methods offered by the page and the API (the first is the default): those that explain an image tower
#: in seconds on a CPU. Grad-CAM++ comes first: on the demo model it localised RadPhantom's effusions best
#: (docs/web.md, "Measured").
EXPLAIN_METHODS: tuple[str, ...] = ExplainMethod.__args__  # type: ignore[attr-defined]


def _has_words(text: str) -> str:
    if not text.strip():
        raise ValueError("the text is empty: type a few words, e.g. 'left pleural effusion'")
    return text


QueryText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS), AfterValidator(_has_words)
]


class _Strict(BaseModel):
    """Unknown fields are an error (a typo such as ``"filter"`` must not be ignored silently)."""

    model_config = ConfigDict(extra="forbid")


class Filters(_Strict):
    """Which studies a search may return; empty lists do not filter."""

    labels: list[Label] = Field(
        default_factory=list, max_length=14, description="every listed CheXpert label must be positive"
    )
    views: list[View] = Field(default_factory=list, max_length=8, description="view positions, e.g. PA")
    splits: list[Split] = Field(default_factory=list, max_length=3, description="official splits")


class SearchRequest(_Strict):
    """Text → image search: a report or a few words."""

    text: QueryText = Field(description=f"the query, 1 to {MAX_QUERY_CHARS} characters")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="number of results")
    filters: Filters = Field(default_factory=Filters)


class Hit(BaseModel):
    """One result: a study, its image, its labels and the first line of its impression."""

    rank: int
    score: float = Field(description="cosine similarity of the query and the result (-1 to 1)")
    row: int = Field(description="the index row: the key of /api/images/{row}, /api/studies/{row}, explain")
    study_id: str = Field(description="the dataset's study id (for display; not unique outside MIMIC)")
    image_id: str | None = Field(description="the dataset's image id (for display; may repeat in an index)")
    view: str | None
    split: str | None
    positive: list[str] = Field(description="labels marked positive (1)")
    uncertain: list[str] = Field(description="labels marked uncertain (-1)")
    impression: str = Field(description="first line of the impression (else of the findings)")
    study_url: str = Field(description="the study's detail: /api/studies/{row}")
    thumbnail_url: str | None = Field(description="/api/images/{row}?size=thumb; null without an image")
    image_url: str | None = Field(description="/api/images/{row}; null without an image")


class SearchResponse(BaseModel):
    """The results of one search, best first, and notices about the query (never the query itself)."""

    results: list[Hit]
    notices: list[str]
    took_ms: float


class StudyImage(BaseModel):
    """One image of a study (one index row)."""

    row: int
    image_id: str | None
    view: str | None
    url: str
    thumbnail_url: str


class StudyDetail(BaseModel):
    """A study: its images, report sections and labels."""

    study_id: str
    subject_id: str | None
    split: str | None
    labels: dict[str, float | None]
    positive: list[str]
    uncertain: list[str]
    findings: str | None
    impression: str | None
    report: str
    images: list[StudyImage]


class ExplainRequest(_Strict):
    """Why does ``text`` match the image of index row ``row``? Without ``text``, that row's report."""

    row: RowNumber = Field(description="the index row whose image is explained (a hit's row)")
    text: QueryText | None = None
    method: ExplainMethod = "gradcam_pp"


class WordScore(BaseModel):
    """A word of the explained text: its place in the text and its relevance.

    ``start`` / ``end`` count Unicode code points (Python's ``text[start:end]``), not UTF-16 units: in
    JavaScript, slice ``Array.from(text)``, not ``text`` itself, or an emoji before a word shifts it.
    """

    start: int = Field(description="offset of the word's first code point in text (Unicode code points)")
    end: int = Field(description="offset just past the word's last code point (Unicode code points)")
    score: float


class ExplainResponse(BaseModel):
    """A heatmap to lay over the image (transparent PNG, same aspect) and the words' relevance."""

    method: str
    row: int
    image_id: str | None
    text_source: Literal["query", "report"]
    text: str = Field(description="the explained text; word offsets refer to it")
    score: float = Field(description="cosine similarity of the text and the image")
    signed: bool = Field(description="whether the heatmap has a sign (blue: against, red: for)")
    heatmap_png: str = Field(description="data: URL of an RGBA PNG, transparent where relevance is low")
    heatmap_max: float = Field(description="the largest |relevance|, the colour scale's end")
    words: list[WordScore]
    truncated: bool = Field(description="the text was longer than the model reads; later words have no score")
    took_ms: float


class QueueStats(BaseModel):
    capacity: int
    workers: int
    pending: int
    completed: int
    rejected: int


class Health(BaseModel):
    """Liveness and what the service holds."""

    status: Literal["ok"]
    version: str
    studies: int
    model_type: str
    queues: dict[str, QueueStats]


class Options(BaseModel):
    """What the page needs to build its controls: filter values present in the index, methods, limits."""

    labels: list[str]
    views: list[str]
    splits: list[str]
    methods: list[str]
    max_query_chars: int
    max_k: int
    default_k: int
    max_upload_mb: float
    studies: int


class ErrorBody(BaseModel):
    """Every error: ``detail`` in plain words, ``hint`` what to do, ``errors`` the fields at fault (422)."""

    detail: str
    hint: str | None = None
    errors: list[dict[str, str]] = Field(default_factory=list)
