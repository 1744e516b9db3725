"""``radlens index build``, ``radlens search`` and ``radlens eval retrieval``: outputs, and one-line
errors (exit 2, no traceback) for every bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
from cli_helpers import assert_fail_before_the_model_stack
from retrieval_helpers import World, world

from radlens.cli import (
    app,
    main,
    retrieval_cmd,
)
from radlens.retrieval import Retriever

if not any(group.name == "index" for group in app.registered_groups):  # until app.py registers it
    retrieval_cmd.register(app)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "Traceback" not in err
    return err


def test_index_build_prints_a_summary(
    tiny: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    args = ["index", "build", "--model", str(tiny.dual), "--data", str(tiny.data), "--out", str(out)]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--kind", "hnsw"]) == 0
    printed = capsys.readouterr().out
    assert f"indexed {len(tiny.records)} studies into {out}" in printed and "hnsw" in printed
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "--overwrite" in _error_line(capsys)


def test_search_json_equals_the_api(tiny: World, capsys: pytest.CaptureFixture[str]) -> None:
    query = tiny.records[4].report_text()
    base = ["search", "--index", str(tiny.index), "--model", str(tiny.dual), "--k", "4"]
    assert main([*base, "--text", query, "--json", "--split", "train", "--view", "pa", "--view", "AP"]) == 0
    printed = json.loads(capsys.readouterr().out)
    from radlens.retrieval import SearchFilter

    expected = Retriever.load(tiny.index, tiny.dual).search_text(
        query, k=4, filters=SearchFilter(views=("PA", "AP"), splits=("train",))
    )
    assert printed["hits"] == [hit.to_dict() for hit in expected]
    assert printed["notices"] == list(expected.notices)


def test_search_table_with_rerank_and_label_filter(tiny: World, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(tiny.records[0].images[0].path)
    args = ["search", "--index", str(tiny.index), "--model", str(tiny.dual), "--image", image, "--k", "3"]
    assert main([*args, "--fusion", str(tiny.fusion), "--rerank", "5", "--label", "no finding"]) == 0
    table = capsys.readouterr().out
    assert "ITM" in table and "impression" in table
    assert main([*args]) == 0
    table = capsys.readouterr().out
    assert tiny.records[0].study_id in table and "ITM" not in table


def test_search_table_gives_each_hit_a_short_row(
    tiny: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The impression is cut to one line (an ellipsis), so k hits stay k short rows in an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    image = str(tiny.records[0].images[0].path)
    args = ["search", "--index", str(tiny.index), "--model", str(tiny.dual), "--image", image, "--k", "4"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    body = lines[lines.index(next(line for line in lines if line.startswith("┡"))) + 1 : -1]
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in body if line.split("│")[1].strip()]  # a row starts where the rank cell is set
    assert [row.split("│")[1].strip() for row in rows] == ["1", "2", "3", "4"]
    assert len(body) <= 4 * 4  # positive labels may wrap onto a few lines; the impression never does
    assert sum("…" in row for row in rows) >= 1


def test_search_notice_for_a_long_query_never_echoes_it(
    tiny: World, capsys: pytest.CaptureFixture[str]
) -> None:
    query = "zebra " + "moderate right pleural effusion " * 40
    args = ["search", "--index", str(tiny.index), "--model", str(tiny.dual), "--text", query]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "note: the query was truncated" in captured.err
    assert "zebra" not in captured.out + captured.err


def test_eval_retrieval_writes_results(
    tiny: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    args = ["eval", "retrieval", "--index", str(tiny.index), "--model", str(tiny.dual), "--out", str(out)]
    assert main([*args, "--split", "all"]) == 0
    assert set(json.loads(out.read_text())) == {"image_to_text", "text_to_image"}
    assert "R@10" in capsys.readouterr().out and out.with_suffix(".md").is_file()


def _bad_inputs(tiny: World, tmp: Path) -> list[tuple[list[str], str]]:
    not_image = tmp / "notes.png"
    not_image.write_text("plain text")
    corrupt = tmp / "corrupt-index"
    shutil.copytree(tiny.index, corrupt)
    (corrupt / "images.faiss").write_bytes(b"garbage")
    no_weights = tmp / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny.dual / "config.json", no_weights / "config.json")
    index, dual = str(tiny.index), str(tiny.dual)
    search = ["search", "--index", index, "--model", dual]
    return [
        ([*search, "--text", "   "], "query text is empty"),
        ([*search, "--text", ""], "query text is empty"),
        ([*search, "--text", "effusion", "--k", "0"], "--k must be a positive"),
        ([*search, "--image", str(not_image)], "cannot read image"),
        ([*search, "--image", str(tmp / "missing.png")], "not found"),
        ([*search], "exactly one of --text and --image"),
        ([*search, "--text", "effusion", "--rerank", "5"], "--fusion"),
        ([*search, "--text", "effusion", "--label", "Bogus"], "unknown label"),
        ([*search, "--text", "effusion", "--split", "tset"], "--split tset matches no indexed study"),
        ([*search, "--text", "effusion", "--view", "lateral"], "--view lateral matches no indexed study"),
        (["search", "--index", str(tmp / "nowhere"), "--model", dual, "--text", "x"], "not found"),
        (["search", "--index", str(corrupt), "--model", dual, "--text", "x"], "corrupt"),
        (["search", "--index", index, "--model", str(tiny.fusion), "--text", "x"], "fusion model"),
        (["search", "--index", index, "--model", str(no_weights), "--text", "x"], "lacks model.safetensors"),
        (["search", "--index", index, "--model", str(tiny.other), "--text", "x"], "another model"),
        ([*search, "--text", "x", "--fusion", dual], "not a fusion"),
        (
            [
                "index",
                "build",
                "--model",
                str(tiny.fusion),
                "--data",
                str(tiny.data),
                "--out",
                str(tmp / "i"),
            ],
            "fusion",
        ),
        (
            [
                "index",
                "build",
                "--model",
                dual,
                "--data",
                str(tiny.data),
                "--out",
                str(tmp / "i"),
                "--kind",
                "lsh",
            ],
            "lsh",
        ),
        (
            [
                "eval",
                "retrieval",
                "--index",
                index,
                "--model",
                dual,
                "--out",
                str(tmp / "r.json"),
                "--split",
                "x",
            ],
            "split",
        ),
    ]


def test_bad_inputs_exit_2_with_one_line(
    tiny: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in _bad_inputs(tiny, tmp_path):
        assert main(args) == 2, args
        line = _error_line(capsys)
        assert message in line, (args, line)
    assert not (tmp_path / "i").exists() and not (tmp_path / "r.json").exists()


def test_option_errors_come_before_the_model_stack_is_imported(tmp_path: Path) -> None:
    """A mistyped option or missing path is reported before torch / transformers load (~5 s): index
    build, search, eval retrieval and serve fail in about a second (checked in a fresh interpreter)."""
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "a-file").write_text("x")
    tmp, ckpt, a_file = str(tmp_path), str(model), str(tmp_path / "a-file")
    search = ["search", "--index", "nowhere", "--model", "nowhere"]
    build = ["index", "build", "--model", ckpt, "--data", tmp, "--out", f"{tmp}/i"]
    evaluate = ["eval", "retrieval", "--index", tmp, "--model", ckpt, "--out", f"{tmp}/r.json"]
    serve = ["serve", "--index", tmp, "--model", ckpt]
    assert_fail_before_the_model_stack(
        [
            ([*search, "--text", "effusion", "--k", "0"], "--k must be a positive"),
            ([*search, "--text", "  "], "query text is empty"),
            ([*search, "--text", "effusion", "--label", "Bogus"], "unknown label"),
            ([*search, "--image", "missing.png"], "not found"),
            ([*search, "--image", tmp], f"--image {tmp} is a folder: pass one image file"),
            ([*search, "--text", "effusion"], "index folder nowhere not found"),
            ([*build, "--out", a_file], f"output path {a_file} is a file"),
            ([*build, "--model", f"{tmp}/none"], f"checkpoint folder {tmp}/none not found"),
            ([*build, "--data", f"{tmp}/none"], f"dataset {tmp}/none not found"),
            ([*evaluate, "--pool", "1"], "the pool must hold at least 2 studies"),
            ([*evaluate, "--out", f"{tmp}/r.txt"], "is not a .json file path"),
            ([*evaluate, "--index", f"{tmp}/none"], f"index folder {tmp}/none not found"),
            ([*evaluate, "--fusion", f"{tmp}/none"], f"checkpoint folder {tmp}/none not found"),
            ([*serve, "--port", "70000"], "--port must be between 0 and 65535"),
            ([*serve, "--model", f"{tmp}/none"], f"checkpoint folder {tmp}/none not found"),
        ]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "model"]  # nothing written
