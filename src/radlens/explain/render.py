"""Pictures of explanations: heatmap PNGs beside the original, and report text shaded token by token.

Signed relevance uses a diverging blue–white–red map with symmetric limits, so white is exactly zero and
equal colours mean equal magnitudes on either side; unsigned maps (Grad-CAM, sensitivity, rollout) use a
sequential map from zero. Figures are drawn with matplotlib's Agg canvas (no display, no global pyplot
state) and written atomically.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radlens.core import InputError, atomic_write_bytes, atomic_write_text

#: Word-piece continuation prefix of BERT-style tokenisers.
PIECE_PREFIX = "##"


def _array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _image_2d(image: Any) -> np.ndarray:
    """H×W grey values from an H×W, C×H×W or 1×C×H×W image (channels averaged), scaled to [0, 1]."""
    array = _array(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        array = array.mean(axis=0)
    if array.ndim != 2:
        raise InputError(f"cannot draw an image of shape {array.shape}", "pass one H×W or C×H×W image")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def colour_mapping(heatmap: np.ndarray, signed: bool) -> tuple[Any, Any]:
    """(colormap, norm): blue–white–red centred on zero for signed maps, sequential for unsigned ones."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize, TwoSlopeNorm

    finite = heatmap[np.isfinite(heatmap)]
    if signed:
        limit = float(np.abs(finite).max()) if finite.size else 0.0
        limit = limit or 1.0
        return colormaps["bwr"], TwoSlopeNorm(vmin=-limit, vcenter=0.0, vmax=limit)
    high = float(finite.max()) if finite.size else 0.0
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    return colormaps["inferno"], Normalize(vmin=low, vmax=high if high > low else low + 1.0)


def heatmap_png(image: Any, heatmap: Any, signed: bool, title: str | None = None) -> bytes:
    """PNG bytes: the original (left) and the heatmap over it with a colour bar (right).

    Signed maps are laid over the image with opacity growing with |relevance| (zero shows the image
    itself); unsigned maps with a constant opacity.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    grey, values = _image_2d(image), _array(heatmap)
    if values.ndim != 2 or values.shape != grey.shape:
        raise InputError(
            f"heatmap shape {values.shape} does not match the image {grey.shape}",
            "pass one H×W heatmap per image",
        )
    cmap, norm = colour_mapping(values, signed)
    if signed:
        alpha: Any = np.clip(np.abs(np.nan_to_num(values)) / norm.vmax, 0.0, 1.0) * 0.9
    else:
        alpha = 0.6
    figure = Figure(figsize=(7.2, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    left.imshow(grey, cmap="gray", vmin=0, vmax=1)
    left.set_title("image", fontsize=9)
    right.imshow(grey, cmap="gray", vmin=0, vmax=1)
    right.imshow(values, cmap=cmap, norm=norm, alpha=alpha)
    right.set_title(title or ("relevance (signed)" if signed else "relevance"), fontsize=9)
    for axis in (left, right):
        axis.set_axis_off()
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=right, fraction=0.046, pad=0.04)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_heatmap_png(
    path: str | os.PathLike[str],
    image: Any,
    heatmap: Any,
    signed: bool,
    title: str | None = None,
) -> Path:
    """Write :func:`heatmap_png` to ``path`` atomically (e.g. ``save_heatmap_png(p, x[0], e.heatmap[0], e.signed)``)."""
    return atomic_write_bytes(path, heatmap_png(image, heatmap, signed, title))


def merge_word_pieces(
    tokens: Sequence[str], scores: Any, drop: Sequence[str] = ("[PAD]", "[CLS]", "[SEP]")
) -> tuple[list[str], list[float]]:
    """Join "##" word pieces back to words, summing their scores; tokens in ``drop`` are left out."""
    values = _array(scores).reshape(-1)
    if len(tokens) != len(values):
        raise InputError(f"{len(tokens)} tokens but {len(values)} scores", "pass one score per token")
    words: list[str] = []
    totals: list[float] = []
    for token, score in zip(tokens, values, strict=True):
        if token in drop:
            continue
        if token.startswith(PIECE_PREFIX) and words:
            words[-1] += token[len(PIECE_PREFIX) :]
            totals[-1] += float(score)
        else:
            words.append(token)
            totals.append(float(score))
    return words, totals


def tokens_html(tokens: Sequence[str], scores: Any, title: str | None = None) -> str:
    """A standalone HTML page with each word shaded by its score: green positive, red negative."""
    words, totals = merge_word_pieces(tokens, scores)
    scale = max((abs(s) for s in totals), default=0.0) or 1.0
    spans = []
    for word, score in zip(words, totals, strict=True):
        strength = 0.85 * abs(score) / scale
        colour = f"rgba(0, 150, 60, {strength:.3f})" if score >= 0 else f"rgba(210, 30, 30, {strength:.3f})"
        spans.append(
            f'<span style="background:{colour};padding:1px 3px;border-radius:3px" '
            f'title="{score:+.4g}">{html.escape(word)}</span>'
        )
    heading = f"<h3>{html.escape(title)}</h3>\n" if title else ""
    legend = (
        '<p style="font-size:small">green: supports the score, red: speaks against it; '
        f"strongest |score| = {scale:.4g}</p>"
    )
    body = " ".join(spans)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>token relevance</title></head>\n'
        f'<body style="font-family:sans-serif;line-height:1.9">\n{heading}<p>{body}</p>\n{legend}\n</body></html>\n'
    )


def save_tokens_html(
    path: str | os.PathLike[str], tokens: Sequence[str], scores: Any, title: str | None = None
) -> Path:
    """Write :func:`tokens_html` to ``path`` atomically."""
    return atomic_write_text(path, tokens_html(tokens, scores, title))
