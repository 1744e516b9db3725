"""``radlens index build``, ``radlens search`` and ``radlens eval retrieval``: outputs, and one-line
errors (exit 2, no traceback) for every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--text", "effusion", "--k", "0"], "--k must be a positive"),
        (["--text", "  "], "query text is empty"),
        (["--text", "effusion", "--label", "Bogus"], "unknown label"),
        (["--image", "missing.png"], "not found"),
    ],
)
def test_option_errors_come_before_the_model_stack_is_imported(options: list[str], message: str) -> None:
    """A mistyped option is reported before torch / transformers load (~5 s), in a fresh interpreter."""
    script = (
        "import sys\n"
        "from radlens.cli.app import main\n"
        f"code = main(['search', '--index', 'nowhere', '--model', 'nowhere', *{options!r}])\n"
        "print(code, 'transformers' in sys.modules, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert message in done.stderr, done.stderr
    assert done.stdout.split() == ["2", "False", "False"], done.stdout
