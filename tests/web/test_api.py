"""The JSON API on a small real index: search, studies, images, explanations, and every error path."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from radlens import __version__
from radlens.data.images import load_image
from radlens.data.schema import CHEXPERT_LABELS
from radlens.web.schemas import EXPLAIN_METHODS, MAX_QUERY_CHARS

QUERY = "large right pleural effusion"


def _rows(retriever: Any) -> list[dict[str, Any]]:
    return list(retriever.index.rows)


def _errors(response: Any) -> list[str]:
    """The fields a 422 names."""
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return [error["field"] for error in body["errors"]]


def test_health_reports_version_and_size(client: Any, retriever: Any) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert body["studies"] == len(retriever) == 24
    assert set(body["queues"]) == {"search", "explain", "image"}


def test_request_ids_are_generated_or_kept_when_safe(client: Any) -> None:
    generated = {client.get("/api/health").headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3
    assert client.get("/api/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    unsafe = client.get("/api/health", headers={"X-Request-ID": "a b\\c<script>"}).headers["x-request-id"]
    assert unsafe != "a b\\c<script>" and unsafe.isalnum()


def test_text_search_returns_the_retrievers_ranking(client: Any, retriever: Any) -> None:
    response = client.post("/api/search", json={"text": QUERY, "k": 5})
    assert response.status_code == 200
    hits = response.json()["results"]
    expected = retriever.search_text(QUERY, k=5)
    assert [h["study_id"] for h in hits] == [h.study_id for h in expected]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, [h.score for h in expected], rtol=1e-6)
    rows = _rows(retriever)
    for hit, row in zip(hits, expected, strict=True):
        assert hit["positive"] == [name for name, value in row.labels.items() if value == 1]
        assert hit["impression"] == row.impression
        indexed = rows[hit["row"]]  # the hit's row is the index row it came from
        assert (indexed["study_id"], indexed["image_id"]) == (row.study_id, row.image_id)
        assert hit["thumbnail_url"] == f"/api/images/{hit['row']}?size=thumb"
        assert hit["image_url"] == f"/api/images/{hit['row']}"
        assert hit["study_url"] == f"/api/studies/{hit['row']}"


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"labels": ["Pleural Effusion"]}, lambda row: row["labels"]["Pleural Effusion"] == 1),
        ({"views": ["pa"]}, lambda row: row["view"] == "PA"),
        ({"splits": ["train"]}, lambda row: row["split"] == "train"),
    ],
)
def test_filters_keep_only_matching_studies(client: Any, retriever: Any, filters: dict, keep: Any) -> None:
    expected = {row["study_id"] for row in _rows(retriever) if keep(row)}
    assert 0 < len(expected) < 24  # the filter really filters on this data
    response = client.post("/api/search", json={"text": QUERY, "k": 50, "filters": filters})
    assert response.status_code == 200
    assert {hit["study_id"] for hit in response.json()["results"]} == expected


def test_a_filter_nothing_matches_gives_no_results(client: Any, retriever: Any) -> None:
    labels = [name for name in CHEXPERT_LABELS if all(row["labels"][name] != 1 for row in _rows(retriever))]
    assert labels, "the fixture should lack at least one positive label"
    response = client.post("/api/search", json={"text": QUERY, "filters": {"labels": labels[:1]}})
    assert response.status_code == 200 and response.json()["results"] == []


def test_query_length_limit(client: Any) -> None:
    assert client.post("/api/search", json={"text": "a" * MAX_QUERY_CHARS, "k": 1}).status_code == 200
    response = client.post("/api/search", json={"text": "a" * (MAX_QUERY_CHARS + 1)})
    assert response.status_code == 422
    assert _errors(response) == ["text"]
    assert "2000" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"text": ""}, ["text"]),
        ({"text": "   \n\t"}, ["text"]),
        ({}, ["text"]),
        ({"text": 42}, ["text"]),
        ({"text": QUERY, "k": 0}, ["k"]),
        ({"text": QUERY, "k": 51}, ["k"]),
        ({"text": QUERY, "k": "ten"}, ["k"]),
        ({"text": QUERY, "filters": {"labels": ["Broken Heart"]}}, ["filters.labels[0]"]),
        ({"text": QUERY, "filters": {"splits": ["holdout"]}}, ["filters.splits[0]"]),
        ({"text": QUERY, "filters": {"views": ["../PA"]}}, ["filters.views[0]"]),
        ({"text": QUERY, "filter": {}}, ["filter"]),
        (["not", "an", "object"], ["body"]),
    ],
)
def test_invalid_search_requests_name_the_field(client: Any, body: Any, fields: list[str]) -> None:
    response = client.post("/api/search", json=body)
    assert response.status_code == 422
    assert _errors(response) == fields


def test_malformed_json_is_422_naming_the_body(client: Any) -> None:
    response = client.post(
        "/api/search", content=b'{"text": "effusion', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert _errors(response) == ["body"]
    assert "not valid JSON" in response.json()["detail"]
    not_utf8 = client.post("/api/search", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert not_utf8.status_code == 422 and _errors(not_utf8) == ["body"]


def test_validation_errors_do_not_echo_the_input(client: Any) -> None:
    secret = "quokka-marmalade " * 130  # > 2,000 characters
    response = client.post("/api/search", json={"text": secret})
    assert response.status_code == 422 and "quokka" not in response.text


def test_study_detail_matches_the_index(client: Any, retriever: Any) -> None:
    row = _rows(retriever)[5]
    response = client.get("/api/studies/5")
    assert response.status_code == 200
    body = response.json()
    assert body["study_id"] == row["study_id"]
    assert body["report"] == row["report"]
    assert body["findings"] == row["findings"] and body["impression"] == row["impression"]
    assert body["positive"] == [name for name in CHEXPERT_LABELS if row["labels"][name] == 1]
    assert [image["image_id"] for image in body["images"]] == [row["image_id"]]
    assert [image["row"] for image in body["images"]] == [5]
    assert body["images"][0]["url"] == "/api/images/5"


def test_unknown_rows_are_404_and_non_rows_422(client: Any, retriever: Any) -> None:
    past = len(retriever)
    for path in (f"/api/studies/{past}", f"/api/images/{past}", "/api/images/99999999?size=thumb"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["detail"]
    image_id = _rows(retriever)[0]["image_id"]  # ids are not keys: only row numbers are
    for path in (f"/api/images/{image_id}", "/api/studies/-1", "/api/images/1.5", "/api/images/0x1"):
        response = client.get(path)
        assert response.status_code == 422, path
        assert _errors(response) == ["row"]


TRAVERSALS = [
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/images/..%5C..%5Cetc%5Cpasswd",
    "/api/images/%252e%252e%252fetc%252fpasswd",
    "/api/images/....%2F%2F....%2F%2Fetc%2Fpasswd",
    "/api/images/%2Fetc%2Fpasswd",
    "/api/images/etc%00passwd",
    "/api/studies/..%2F..%2Fetc%2Fpasswd",
    "/api/studies/..",
    "/api/images/.htaccess",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_attempts_are_refused(client: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422), path
    assert response.headers["content-type"].startswith("application/json")
    assert "root:" not in response.text


def test_path_traversal_through_an_indexed_row_is_refused(client: Any) -> None:
    response = client.get("/api/images/0%2F..%2F..%2F..%2Fetc%2Fpasswd")
    assert response.status_code in (404, 422)
    assert client.get("/api/images/0?size=../../etc/passwd").status_code == 422


def test_images_are_the_indexed_pixels_as_png(client: Any, retriever: Any) -> None:
    response = client.get("/api/images/2")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    served = np.asarray(Image.open(io.BytesIO(response.content)))
    expected = np.round(load_image(_rows(retriever)[2]["image_path"]) * 255).astype(np.uint8)
    np.testing.assert_array_equal(served, expected)


def test_thumbnails_are_small_and_cached(app: Any, client: Any, retriever: Any) -> None:
    from radlens.web._images import ImageStore

    store: ImageStore = app.state.service.images
    first = client.get("/api/images/3?size=thumb")
    hits_before = store._render.cache_info().hits
    second = client.get("/api/images/3?size=thumb")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert store._render.cache_info().hits == hits_before + 1
    assert max(Image.open(io.BytesIO(first.content)).size) <= store.sides["thumb"]
    assert "max-age" in first.headers["cache-control"]


def test_the_png_cache_is_bounded_by_bytes_not_count(tmp_path: Path) -> None:
    from radlens.web._images import ImageStore

    rng = np.random.default_rng(0)
    paths = []
    for number in range(6):  # noise does not compress: each full PNG is about 64 KB
        path = tmp_path / f"{number}.png"
        Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8), mode="L").save(path)
        paths.append(path)
    one = len(ImageStore(full_side=256, cache_mb=1).png(paths[0], "full"))
    store = ImageStore(full_side=256, cache_mb=2.5 * one / 2**20)  # room for two of them
    served = [store.png(path, "full") for path in paths]
    assert all(len(png) > 0.9 * one for png in served)
    assert one <= store.cached_bytes <= 2.5 * one  # the older ones went; at most two are held
    assert store.png(paths[-1], "full") == served[-1] and "hits=1" in store.cache_info()
    assert ImageStore(full_side=256, cache_mb=0.5 * one / 2**20).png(paths[0], "full") == served[0]


def _explain(client: Any, **body: Any) -> Any:
    return client.post("/api/explain", json=body)


@pytest.mark.parametrize("method", EXPLAIN_METHODS)
def test_explain_gives_a_heatmap_and_word_scores(client: Any, retriever: Any, method: str) -> None:
    hit = client.post("/api/search", json={"text": QUERY, "k": 1}).json()["results"][0]
    response = _explain(client, text=QUERY, row=hit["row"], method=method)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text_source"] == "query" and body["text"] == QUERY
    assert (body["row"], body["image_id"]) == (hit["row"], hit["image_id"])
    # The explained score is the similarity the search ranked by.
    assert body["score"] == pytest.approx(hit["score"], abs=1e-4)
    prefix = "data:image/png;base64,"
    assert body["heatmap_png"].startswith(prefix)
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"][len(prefix) :])))
    assert heatmap.mode == "RGBA" and heatmap.size == (64, 64)
    alpha = np.asarray(heatmap)[..., 3]
    assert alpha.max() == 255  # the strongest relevance is opaque
    # Words are the query's words, in order, as typed.
    assert [QUERY[w["start"] : w["end"]] for w in body["words"]] == QUERY.split()
    assert all(np.isfinite(w["score"]) for w in body["words"])
    assert body["truncated"] is False


def test_explain_without_text_uses_the_images_report(client: Any, retriever: Any) -> None:
    row = _rows(retriever)[7]
    body = _explain(client, row=7).json()
    assert body["text_source"] == "report" and body["text"] == row["report"]
    words = [row["report"][w["start"] : w["end"]] for w in body["words"]]
    assert words and all(word.strip() and word in row["report"] for word in words)
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts)


def test_explain_reports_truncated_text(client: Any, retriever: Any) -> None:
    text = " ".join(["effusion"] * 60)  # more than the model's 32 tokens
    body = _explain(client, text=text, row=0).json()
    assert body["truncated"] is True
    assert 0 < len(body["words"]) < 60
    assert body["words"][-1]["end"] < len(text)


@pytest.mark.parametrize(
    ("body", "status", "fields"),
    [
        ({"text": QUERY, "row": 24}, 404, None),
        ({"text": QUERY, "row": 99999999}, 404, None),
        ({"text": QUERY, "row": "../../etc/passwd"}, 422, ["row"]),
        ({"text": QUERY, "row": -1}, 422, ["row"]),
        ({"text": QUERY, "row": 1.5}, 422, ["row"]),
        ({"text": QUERY}, 422, ["row"]),
        ({"text": QUERY, "image_id": "a"}, 422, ["row", "image_id"]),
        ({"text": "x" * 2001, "row": 0}, 422, ["text"]),
        ({"text": QUERY, "row": 0, "method": "lime"}, 422, ["method"]),
    ],
)
def test_explain_errors(client: Any, body: dict, status: int, fields: list[str] | None) -> None:
    response = _explain(client, **body)
    assert response.status_code == status
    if fields:
        assert _errors(response) == fields


def test_explain_with_a_real_image_and_a_bad_method_names_the_method(client: Any, retriever: Any) -> None:
    response = _explain(client, text=QUERY, row=0, method="occlusion")
    assert response.status_code == 422 and _errors(response) == ["method"]


def test_options_list_what_the_index_holds(client: Any, retriever: Any) -> None:
    body = client.get("/api/options").json()
    assert body["labels"] == list(CHEXPERT_LABELS)
    assert body["views"] == sorted({row["view"] for row in _rows(retriever)})
    assert body["methods"] == list(EXPLAIN_METHODS)
    assert body["max_query_chars"] == MAX_QUERY_CHARS


def test_openapi_document_lists_every_endpoint(client: Any) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {
        "/api/search",
        "/api/search/image",
        "/api/studies/{row}",
        "/api/images/{row}",
        "/api/explain",
        "/api/health",
        "/api/options",
    } <= set(paths)
    upload = paths["/api/search/image"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
