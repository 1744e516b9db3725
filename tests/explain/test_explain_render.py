"""Rendering: colour scales that put zero at white, PNGs beside the original, token HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from radlens.core import InputError
from radlens.explain import merge_word_pieces, save_heatmap_png, save_tokens_html, tokens_html
from radlens.explain.render import colour_mapping


def test_signed_maps_are_white_at_zero_and_symmetric() -> None:
    heatmap = np.array([[-0.2, 0.0], [0.5, 1.0]])
    cmap, norm = colour_mapping(heatmap, signed=True)
    np.testing.assert_allclose(cmap(norm(0.0))[:3], (1.0, 1.0, 1.0), atol=0.01)
    assert norm.vmin == -1.0 and norm.vmax == 1.0
    blue, red = cmap(norm(-1.0)), cmap(norm(1.0))
    assert blue[2] > blue[0] and red[0] > red[2]
    cmap, norm = colour_mapping(np.array([[0.0, 2.0]]), signed=False)
    assert norm.vmin == 0.0 and norm.vmax == 2.0
    assert cmap.name == "inferno"


def test_heatmap_png_is_written_beside_the_original(tmp_path: Path) -> None:
    image = torch.rand(1, 32, 48)
    heatmap = torch.linspace(-1, 1, 32 * 48).view(32, 48)
    path = save_heatmap_png(tmp_path / "out" / "lrp.png", image, heatmap, signed=True, title="LRP")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (720, 340)
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.std() > 10  # not blank
    assert sorted(p.name for p in path.parent.iterdir()) == ["lrp.png"]  # atomic: no temp files left
    with pytest.raises(InputError, match="does not match"):
        save_heatmap_png(tmp_path / "bad.png", image, heatmap[:10], signed=True)
    assert not (tmp_path / "bad.png").exists()


def test_word_pieces_are_merged_and_scores_summed() -> None:
    tokens = ["[CLS]", "pleural", "eff", "##usion", "##s", "noted", "[SEP]", "[PAD]"]
    scores = torch.tensor([0.0, 0.5, 0.25, 0.5, 0.25, -0.3, 0.0, 9.0])
    words, totals = merge_word_pieces(tokens, scores)
    assert words == ["pleural", "effusions", "noted"]
    np.testing.assert_allclose(totals, [0.5, 1.0, -0.3])
    words, totals = merge_word_pieces(tokens, scores, drop=())
    assert words == ["[CLS]", "pleural", "effusions", "noted", "[SEP]", "[PAD]"]
    np.testing.assert_allclose(totals, [0.0, 0.5, 1.0, -0.3, 0.0, 9.0])
    with pytest.raises(InputError, match="one score per token"):
        merge_word_pieces(tokens, scores[:3])


def test_token_html_shades_positive_green_negative_red(tmp_path: Path) -> None:
    page = tokens_html(["small", "<effusion>", "##s", "absent"], [0.2, 0.4, 0.4, -0.5], title="ITM")
    assert "&lt;effusion&gt;s" in page and "<effusion>" not in page
    spans = [line for line in page.split("<span")[1:]]
    assert "rgba(0, 150, 60" in spans[1] and "0.850" in spans[1]  # strongest positive: full green
    assert "rgba(210, 30, 30" in spans[2]
    path = save_tokens_html(tmp_path / "tokens.html", ["a", "b"], [1.0, -1.0])
    assert path.read_text(encoding="utf-8").startswith("<!doctype html>")
