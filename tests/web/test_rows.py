"""Images and studies are addressed by index row, not by id: on a CSV dataset (``--format csv``) ids repeat.

The CSV reader names an image by its file's stem, so ``s00/frontal.png`` and ``s01/frontal.png`` are both
``frontal``, and a row without a ``study_id`` gets its image path (with ``/``) as study id. Here every
study keeps its X-ray as ``sNN/frontal.png`` and only the last has a study id: ``"0"``, which is a row
number too (the row is the key, never the id).
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from radlens.data.images import load_image

QUERY = "large right pleural effusion"
STUDIES = 7


@pytest.fixture(scope="module")
def csv_retriever(web_data: Any, retriever: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Retriever over an index of a CSV dataset whose image ids all repeat."""
    from radlens.retrieval import Retriever, build_index

    root = tmp_path_factory.mktemp("csv-rows")
    data = root / "data"
    sources = retriever.index.rows
    with open(root / "table.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "report", "study_id"])
        for number in range(STUDIES):
            folder = data / f"s{number:02d}"
            folder.mkdir(parents=True)
            shutil.copy(sources[number]["image_path"], folder / "frontal.png")
            study_id = "0" if number == STUDIES - 1 else ""  # blank: the image path is the study id
            writer.writerow([f"data/s{number:02d}/frontal.png", sources[number]["report"], study_id])
    build_index(web_data.model, root / "table.csv", root / "index", format="csv", cache_dir=root / "cache")
    loaded = Retriever.load(root / "index", web_data.model)
    rows = loaded.index.rows
    # The dataset is what the test needs: one image id for all, study ids with "/", and an id "0".
    assert len(rows) == STUDIES and {row["image_id"] for row in rows} == {"frontal"}
    assert sorted(row["study_id"] for row in rows) == ["0"] + [
        f"data/s{n:02d}/frontal.png" for n in range(STUDIES - 1)
    ]
    return loaded


@pytest.fixture(scope="module")
def csv_client(csv_retriever: Any) -> Any:
    from fastapi.testclient import TestClient

    from radlens.web.app import create_app

    with TestClient(create_app(csv_retriever)) as test_client:
        yield test_client


def _png_pixels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_each_hit_shows_opens_and_explains_its_own_image(csv_client: Any, csv_retriever: Any) -> None:
    rows = csv_retriever.index.rows
    response = csv_client.post("/api/search", json={"text": QUERY, "k": len(rows)})
    assert response.status_code == 200
    hits = response.json()["results"]
    assert sorted(hit["row"] for hit in hits) == list(range(len(rows)))  # every row once
    served = []
    for hit in hits:
        row = rows[hit["row"]]
        assert (hit["study_id"], hit["image_id"]) == (row["study_id"], row["image_id"])
        # The image URL serves this row's own pixels.
        image = csv_client.get(hit["image_url"])
        assert image.status_code == 200, hit["image_url"]
        expected = np.round(load_image(row["image_path"]) * 255).astype(np.uint8)
        np.testing.assert_array_equal(_png_pixels(image.content), expected)
        served.append(image.content)
        assert csv_client.get(hit["thumbnail_url"]).status_code == 200
        # The detail opens, even for a study id with "/" in it, and lists this row's image.
        study = csv_client.get(hit["study_url"])
        assert study.status_code == 200, hit["study_url"]
        body = study.json()
        assert body["study_id"] == row["study_id"] and body["report"] == row["report"]
        assert hit["row"] in [image["row"] for image in body["images"]]
        # The explanation is of this row's image: its score is the one the search ranked by.
        explained = csv_client.post("/api/explain", json={"row": hit["row"], "text": QUERY})
        assert explained.status_code == 200, explained.text
        assert explained.json()["row"] == hit["row"]
        assert explained.json()["score"] == pytest.approx(hit["score"], abs=1e-4)
    assert len(set(served)) == len(rows)  # the copied phantom images all differ


def test_image_search_hits_carry_distinct_rows(csv_client: Any, csv_retriever: Any) -> None:
    rows = csv_retriever.index.rows
    upload = Path(rows[0]["image_path"]).read_bytes()
    response = csv_client.post(
        "/api/search/image", files={"file": ("x.png", upload, "image/png")}, data={"k": str(len(rows))}
    )
    assert response.status_code == 200
    hits = response.json()["results"]
    assert sorted(hit["row"] for hit in hits) == list(range(len(rows)))
    assert len({hit["image_url"] for hit in hits}) == len(rows)
    # The same ranking as the Retriever's, each hit keeping its own row and image.
    expected = csv_retriever.search_image(rows[0]["image_path"], k=len(rows))
    np.testing.assert_allclose([hit["score"] for hit in hits], [hit.score for hit in expected], rtol=1e-6)
