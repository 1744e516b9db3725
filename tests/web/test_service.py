"""The service around the API: bounded queue (503 + Retry-After), access logs without patient text,
request ids, CORS off by default, security headers, JSON 500s, and the self-contained page."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from radlens.web.app import STATIC_DIR, Settings, create_app
from radlens.web.schemas import EXPLAIN_METHODS

SECRET = "zebraquokka7781"  # a word no model, report or log would contain by chance


def test_full_queue_answers_503_with_retry_after(retriever: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(retriever, Settings(queue_size=2))
    queue = app.state.service.search_queue
    release = threading.Event()
    real = retriever.embedder.embed_texts

    def blocked(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=30)
        return real(*args, **kwargs)

    monkeypatch.setattr(retriever.embedder, "embed_texts", blocked)

    async def scenario() -> tuple[list[int], httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"text": "effusion", "k": 3}
            waiting = [asyncio.create_task(client.post("/api/search", json=body)) for _ in range(2)]
            for _ in range(500):  # until both are admitted (one running, one waiting)
                if queue.pending == 2:
                    break
                await asyncio.sleep(0.01)
            assert queue.pending == 2
            refused = await client.post("/api/search", json=body)
            release.set()
            statuses = [(await task).status_code for task in waiting]
            after = await client.post("/api/search", json=body)
            return statuses, refused, after

    statuses, refused, after = asyncio.run(scenario())
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert "busy" in refused.json()["detail"]
    assert statuses == [200, 200]  # the admitted requests were served
    assert after.status_code == 200  # and the queue drained
    assert queue.pending == 0 and queue.rejected == 1


def _records(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == name]


def test_logs_hold_no_query_or_report_text(
    client: Any, retriever: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    query = f"large right pleural effusion {SECRET}"
    row = retriever.index.rows[0]
    report_words = [w for w in re.findall(r"[A-Za-z]{6,}", row["report"])][:3]
    responses = [
        client.post("/api/search", json={"text": query, "k": 3}),
        client.post("/api/explain", json={"text": query, "row": 0}),
        client.post("/api/explain", json={"row": 0, "method": EXPLAIN_METHODS[0]}),
        client.post("/api/search", json={"text": SECRET * 200}),  # 422: too long
        client.post("/api/search?q=" + SECRET, json={"text": query}),
        client.get("/api/studies/17"),
        client.get(f"/api/{SECRET}"),  # an unknown path: 404, and the path is not logged
        client.get("/static/app.css"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 422, 200, 200, 404, 200]
    out, err = capfd.readouterr()
    # Everything the server side logged or printed (the test's own HTTP client logs its URLs: left out).
    server = [r for r in caplog.records if not r.name.startswith("httpx")]
    logged = "\n".join(r.getMessage() for r in server) + out + err
    assert SECRET not in logged
    assert not any(word in logged for word in report_words)
    access = _records(caplog, "radlens.web.access")
    assert len(access) == len(responses)
    assert {entry["request_id"] for entry in access} == {r.headers["x-request-id"] for r in responses}
    routes = [entry["route"] for entry in access]
    assert routes.count("/api/search") == 3 and "/api/studies/{row}" in routes
    assert "(no route)" in routes and "/static/{file}" in routes
    assert not any("/api/studies/17" in json.dumps(entry) for entry in access)  # templates, not raw paths
    assert all(entry["method"] in ("GET", "POST") and entry["duration_ms"] >= 0 for entry in access)
    assert sorted(entry["status"] for entry in access) == sorted(r.status_code for r in responses)


def test_unexpected_errors_are_json_500s_without_their_message(
    retriever: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"something mentioning {SECRET}")

    monkeypatch.setattr(retriever.embedder, "embed_texts", broken)
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(retriever), raise_server_exceptions=False) as client:
        response = client.post("/api/search", json={"text": "effusion"})
    assert response.status_code == 500
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert SECRET not in response.text and SECRET not in caplog.text
    errors = _records(caplog, "radlens.web.error")
    assert errors and errors[0]["error"] == "RuntimeError"
    assert _records(caplog, "radlens.web.access")[-1]["status"] == 500


def test_oversized_json_body_is_413(client: Any) -> None:
    response = client.post("/api/search", content=b'{"text": "' + b"a" * 100_000 + b'"}')
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


@pytest.fixture(scope="module")
def cors_client(retriever: Any) -> Iterator[TestClient]:
    with TestClient(create_app(retriever, Settings(cors_origins=("http://localhost:3000",)))) as client:
        yield client


def _preflight(client: Any, origin: str) -> Any:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    return client.options("/api/search", headers=headers)


def test_cors_is_off_by_default(client: Any) -> None:
    assert "access-control-allow-origin" not in _preflight(client, "http://localhost:3000").headers
    response = client.get("/api/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_the_named_origin(cors_client: Any) -> None:
    allowed = _preflight(cors_client, "http://localhost:3000")
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "access-control-allow-origin" not in _preflight(cors_client, "http://evil.example").headers


def test_security_headers_on_page_and_api(client: Any) -> None:
    for path in ("/", "/api/health", "/static/app.js"):
        headers = client.get(path).headers
        assert "default-src 'self'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    assert client.get("/api/health").headers["cache-control"] == "no-store"


def test_page_is_self_contained_and_says_research_use_only(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Research use only — not for diagnosis." in page.text
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        # Nothing from elsewhere: no absolute URLs, protocol-relative URLs or CSS imports.
        assert not re.search(r"""(https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", text, re.IGNORECASE), name
        assert "@import" not in text
        assert client.get(f"/static/{name}").status_code == 200
    script = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|eval\(", script)


def test_swagger_ui_is_not_served_because_it_needs_a_cdn(client: Any) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/api/openapi.json").status_code == 200


def test_concurrent_searches_are_batched_and_each_gets_its_own_answer(
    retriever: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(retriever)
    queue = app.state.service.search_queue
    gate = threading.Event()
    real = retriever.embedder.embed_texts
    batch_sizes: list[int] = []

    def held(texts: Any, *args: Any, **kwargs: Any) -> Any:
        batch_sizes.append(len(texts))
        gate.wait(timeout=30)  # hold the first batch so that the others gather behind it
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(retriever.embedder, "embed_texts", held)
    queries = [
        {"text": "large right pleural effusion", "k": 3},
        {"text": "left pneumothorax", "k": 5, "filters": {"views": ["PA"]}},
        {"text": "cardiomegaly", "k": 24, "filters": {"labels": ["Pleural Effusion"]}},
        {"text": " ".join(["effusion"] * 60), "k": 2},  # longer than the model reads: a notice
        {"text": "no acute findings", "k": 1, "filters": {"splits": ["train"]}},
    ]

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post("/api/search", json={"text": "rib fracture"}))
            while not batch_sizes:
                await asyncio.sleep(0.01)
            rest = [asyncio.create_task(client.post("/api/search", json=body)) for body in queries]
            while queue.pending < 1 + len(queries):
                await asyncio.sleep(0.01)
            gate.set()
            return [await task for task in [first, *rest]]

    responses = asyncio.run(scenario())
    assert batch_sizes == [1, len(queries)]  # the waiting queries were embedded as one batch
    monkeypatch.setattr(retriever.embedder, "embed_texts", real)
    from radlens.retrieval.index import SearchFilter

    for body, response in zip(queries, responses[1:], strict=True):
        assert response.status_code == 200
        chosen = body.get("filters", {})
        filters = SearchFilter(
            positive=tuple(chosen.get("labels", ())),
            views=tuple(chosen.get("views", ())),
            splits=tuple(chosen.get("splits", ())),
        )
        expected = retriever.search_text(body["text"], k=body["k"], filters=filters)
        got = response.json()
        assert [hit["study_id"] for hit in got["results"]] == [hit.study_id for hit in expected]
        assert [hit["score"] for hit in got["results"]] == pytest.approx(
            [hit.score for hit in expected], abs=1e-5
        )
        assert [hit["impression"] for hit in got["results"]] == [hit.impression for hit in expected]
        assert got["notices"] == list(expected.notices)
    assert responses[4].json()["notices"]  # the long query was flagged
