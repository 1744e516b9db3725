"""A picture grid of studies: first image, finding masks outlined in colour, positive labels underneath.

Used by ``radlens phantom show`` to eyeball a RadPhantom (or any masked) dataset: one tile per study,
each CheXpert finding mask outlined in its own colour (legend at the bottom), the study id and its
positive labels written under the tile. Unreadable images or masks are not skipped silently: the tile
says what is missing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from radlens.core import InputError, atomic_write_bytes
from radlens.data.schema import CHEXPERT_LABELS, StudyRecord
from radlens.phantom.render import mask_slug

#: Outline colour of each finding's mask (RGB); also the colour of its label under the tile.
FINDING_COLOURS: dict[str, tuple[int, int, int]] = {
    "Lung Opacity": (150, 230, 230),
    "Atelectasis": (255, 200, 0),
    "Cardiomegaly": (255, 60, 60),
    "Consolidation": (0, 200, 255),
    "Edema": (130, 130, 255),
    "Enlarged Cardiomediastinum": (255, 0, 200),
    "Fracture": (255, 255, 0),
    "Lung Lesion": (0, 255, 120),
    "Pleural Effusion": (0, 110, 255),
    "Pleural Other": (205, 140, 80),
    "Pneumonia": (255, 130, 180),
    "Pneumothorax": (170, 255, 0),
    "Support Devices": (255, 110, 0),
}
_BY_SLUG = {mask_slug(name): name for name in FINDING_COLOURS}  # also accept "pleural_effusion" keys
TEXT = (225, 225, 225)
MUTED = (150, 150, 150)
BACKGROUND = (24, 24, 24)
PAD = 8  # pixels around every tile


@lru_cache(maxsize=4)
def _font(pixels: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=pixels)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Boundary pixels of a boolean mask (inside pixels with an outside 4-neighbour), ``width`` thick."""
    inner = mask.copy()
    for _ in range(width):
        eroded = inner.copy()
        eroded[1:] &= inner[:-1]
        eroded[:-1] &= inner[1:]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return mask & ~inner


def _fit(image: Image.Image, thumb: int, resample: Image.Resampling) -> Image.Image:
    """Scale to fit a thumb x thumb square, letterboxed with black."""
    return ImageOps.pad(image, (thumb, thumb), method=resample, color=0)


def _tile(
    record: StudyRecord, thumb: int
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int]]], set[str]]:
    """One study's tile (RGB array), its caption lines (text, colour) and the findings outlined."""
    lines: list[tuple[str, tuple[int, int, int]]] = [(str(record.study_id), MUTED)]
    tile = np.zeros((thumb, thumb, 3), dtype=np.uint8)
    drawn: set[str] = set()
    if not record.images:
        lines.append(("(no image)", MUTED))
    else:
        first = record.images[0]
        try:
            with Image.open(first.path) as image:
                tile[:] = np.asarray(_fit(image.convert("L"), thumb, Image.Resampling.BILINEAR))[..., None]
        except (OSError, UnidentifiedImageError, ValueError):
            lines.append(("(unreadable image)", MUTED))
        width = 1 if thumb <= 320 else 2
        findings = {
            _BY_SLUG[mask_slug(key)]: path for key, path in first.masks.items() if mask_slug(key) in _BY_SLUG
        }
        for name in sorted(findings, key=lambda n: (n != "Lung Opacity", n)):  # anatomy masks are skipped
            try:
                with Image.open(findings[name]) as mask_image:
                    mask = np.asarray(_fit(mask_image.convert("L"), thumb, Image.Resampling.NEAREST)) > 0
            except (OSError, UnidentifiedImageError, ValueError):
                lines.append((f"(mask missing: {name})", MUTED))
                continue
            tile[_outline(mask, width)] = FINDING_COLOURS[name]
            drawn.add(name)
    positives = record.positive_labels()
    lines += [(name, FINDING_COLOURS.get(name, TEXT)) for name in CHEXPERT_LABELS if name in positives]
    return tile, lines, drawn


def write_grid(records: Sequence[StudyRecord], out: Path, columns: int = 4, thumb: int = 256) -> Path:
    """Write a PNG grid of ``records`` (first image of each) to ``out`` atomically; return ``out``.

    Layout: ``min(columns, n)`` tiles per row, ``ceil(n / columns)`` rows; each cell is ``thumb`` wide
    and ``thumb`` + caption tall, with ``PAD`` pixels around; a legend of the outlined findings below.
    """
    if not records:
        raise InputError(
            "no studies to show", "point the command at a dataset folder with at least one study"
        )
    if columns < 1:
        raise InputError(f"columns must be at least 1, got {columns}", "use --columns 1 or more")
    if not 32 <= thumb <= 2048:
        raise InputError(f"thumbnail size {thumb} is out of range", "use a thumbnail size from 32 to 2048")
    tiles = [_tile(record, thumb) for record in records]
    font = _font(max(10, thumb // 18))
    line_height = int(font.getbbox("Ag")[3]) + 3
    caption = line_height * max(len(lines) for _, lines, _ in tiles) + PAD // 2
    cols, rows = min(columns, len(tiles)), math.ceil(len(tiles) / columns)
    width = cols * (thumb + PAD) + PAD
    seen = [name for name in FINDING_COLOURS if any(name in drawn for _, _, drawn in tiles)]
    legend = _legend_layout(seen, font, width, line_height)
    height = rows * (thumb + caption + PAD) + PAD + (legend[-1][2] + line_height + PAD if legend else 0)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, (tile, lines, _) in enumerate(tiles):
        x, y = PAD + (k % cols) * (thumb + PAD), PAD + (k // cols) * (thumb + caption + PAD)
        canvas.paste(Image.fromarray(tile), (x, y))
        for j, (text, colour) in enumerate(lines):
            draw.text(
                (x, y + thumb + 2 + j * line_height), _clip(draw, text, font, thumb), fill=colour, font=font
            )
    top = rows * (thumb + caption + PAD) + PAD
    for name, x, y in legend:
        swatch = line_height - 5
        draw.rectangle(
            (x, top + y + 2, x + swatch, top + y + 2 + swatch), outline=FINDING_COLOURS[name], width=2
        )
        draw.text((x + swatch + 5, top + y), name, fill=TEXT, font=font)

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=False)
    return atomic_write_bytes(out, buffer.getvalue())


def _legend_layout(
    names: list[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int, line_height: int
) -> list[tuple[str, int, int]]:
    """(name, x, y) of each legend entry, flowing left to right and wrapping at ``width``."""
    entries, x, y = [], PAD, 0
    for name in names:
        entry = line_height + 5 + int(font.getlength(name)) + 2 * PAD
        if x > PAD and x + entry > width:
            x, y = PAD, y + line_height
        entries.append((name, x, y))
        x += entry
    return entries


def _clip(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> str:
    """Shorten ``text`` with an ellipsis so it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
