"""``radlens explain`` and ``radlens eval explain`` through the CLI: what they write, that a ``--text``
never leaves the HTML page, and one-line errors (exit 2, nothing written) for bad input."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "explain"))
from explain_models import vgg_classifier_checkpoint
from retrieval_helpers import World, world

from radlens.cli import main
from radlens.explain import explain
from radlens.explain._eval_data import load_image_tensor
from radlens.models import load_checkpoint

# A phrase no phantom report contains, so finding it in a file can only mean the CLI wrote it there.
SECRET = "zebra effusion quantum"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vgg_classifier_checkpoint(tmp_path_factory.mktemp("explain_cli") / "classifier")


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "Traceback" not in err
    return err


def _png(path: Path) -> np.ndarray:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_explain_classifier_explains_its_most_likely_label(
    tiny: World, classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tiny.records[0].images[0].path
    out = tmp_path / "maps" / "gradcam.png"
    assert main(["explain", "--model", str(classifier), "--image", str(image), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = load_checkpoint(classifier).eval()
    pixels = load_image_tensor(image, 64).unsqueeze(0)
    with torch.no_grad():
        top = model.labels[int(torch.sigmoid(model(pixels))[0].argmax())]
    settings = (out.parent / "gradcam_config.yaml").read_text()
    assert f"label: {top}" in settings and "text_given: false" in settings and "method: gradcam" in settings
    picture = _png(out)
    assert picture.shape[0] > 64 and picture.std() > 0  # the overlay with its colour bar, not a blank
    assert (out.parent / "versions.json").is_file() and not out.with_suffix(".html").exists()

    # An explicit label is the one explained: its Grad-CAM differs from the top label's.
    other = next(label for label in model.labels if label != top)
    second = tmp_path / "other.png"
    args = ["explain", "--model", str(classifier), "--image", str(image), "--out", str(second)]
    assert main([*args, "--label", other]) == 0
    assert f"label: {other}" in (tmp_path / "other_config.yaml").read_text()
    mine, theirs = (explain(model, pixels, name, method="gradcam").heatmap for name in (top, other))
    assert not torch.allclose(mine, theirs)
    assert not np.array_equal(picture, _png(second))


def test_explain_dual_encoder_writes_word_scores_and_keeps_the_text_out_of_everything_else(
    tiny: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tiny.records[1].images[0].path
    out = tmp_path / "match.png"
    args = ["explain", "--model", str(tiny.dual), "--image", str(image), "--out", str(out)]
    assert main([*args, "--text", SECRET, "--method", "integrated_gradients"]) == 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    html = out.with_suffix(".html").read_text()
    for word in SECRET.split():
        assert word in html  # the page of word scores is the requested output
    assert "text_given: true" in (tmp_path / "match_config.yaml").read_text()
    for path in tmp_path.iterdir():
        if path.suffix != ".html":
            assert SECRET.encode() not in path.read_bytes(), path
    assert _png(out).std() > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "gradcamm"], "unknown method 'gradcamm'"),
        (["--out", "{tmp}/map.jpg"], "is not a .png file path"),
        (["--image", "{tmp}/missing.png"], "not found"),
        (["--text", "   "], "--text is empty"),
        (["--label", "Broken Bone"], "unknown --label 'Broken Bone'"),
        (["--model", "{dual}"], "pass --text"),
        (["--image-size", "-5"], "--image-size must be at least 16 (got -5)"),
        (["--image-size", "0"], "--image-size must be at least 16 (got 0)"),
        (["--method", "activation_maximisation"], "does not explain --image"),
        (["--text", "left effusion"], "--text is for a dual encoder or fusion model"),
        (["--model", "{dual}", "--text", "left effusion", "--label", "Edema"], "--label is for classifiers"),
    ],
)
def test_explain_bad_input_is_one_line_and_writes_nothing(
    tiny: World,
    classifier: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    values = {"model": str(classifier), "image": str(tiny.records[0].images[0].path)}
    values["out"] = str(tmp_path / "map.png")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        values[flag.lstrip("-")] = value.format(tmp=tmp_path, dual=tiny.dual)
    args = ["explain"] + [part for key, value in values.items() for part in (f"--{key}", value)]
    assert main(args) == 2
    assert message in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_eval_explain_cli_writes_results_and_passes_method_options(
    tiny: World, classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["eval", "explain", "--model", str(classifier), "--data", str(tiny.data), "--out", str(out)]
    args += ["--split", "all", "--methods", "gradcam, integrated_gradients", "--findings", "Cardiomegaly"]
    args += ["--n", "2", "--randomisation-layers", "1", "--randomisation-images", "1", "--examples", "0"]
    assert main([*args, "--option", "integrated_gradients.n_steps=4"]) == 0
    printed = capsys.readouterr().out
    assert "| Cardiomegaly |" in printed and f"wrote {out / 'results.json'}" in printed
    document = json.loads((out / "results.json").read_text())
    assert set(document["scores"]) == {"gradcam", "integrated_gradients"}
    assert document["scores"]["gradcam"]["Cardiomegaly"]["n"] == 2
    settings = (out / "config.yaml").read_text()
    assert "n_steps: 4" in settings and "- Cardiomegaly" in settings


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--option", "n_steps=4"], "bad --option 'n_steps=4'"),
        (["--methods", " , "], "empty list"),
        (["--tolerance", "-1"], "invalid option --tolerance"),
        (["--data", "{tmp}/nowhere"], "not found"),
    ],
)
def test_eval_explain_cli_bad_input_is_one_line(
    tiny: World,
    classifier: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "eval"
    args = ["eval", "explain", "--model", str(classifier), "--data", str(tiny.data), "--out", str(out)]
    assert main([*args, *(part.format(tmp=tmp_path) for part in extra)]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()
