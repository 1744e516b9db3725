"""How a RadPhantom attenuation map becomes pixels: exposure curve, noise, and the "clinical" look.

``clean``: a smooth exponential exposure curve and white quantum noise. ``clinical`` is a deliberate
domain shift: an S-shaped (harder) contrast curve, blur, correlated noise with faint anti-scatter grid
lines, collimation borders and burned-in annotations ("PORTABLE", an L/R side marker).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from radlens.phantom._raster import F32, blur3, noise_crop
from radlens.phantom.spec import Anatomy


def develop(attenuation: np.ndarray, anatomy: Anatomy, style: str) -> np.ndarray:
    """Map attenuation to display intensity in [0, 1] (dense = bright), before noise.

    ``contrast`` scales the exponent of the exposure curve (gamma-like); ``exposure`` is a gain.
    "clinical" adds a harder S-curve and a soft detector blur.
    """
    gain = F32(-0.9 * float(np.clip(anatomy.contrast, 0.3, 3.0)))
    image = F32(1.0) - np.exp(attenuation * gain)
    if style == "clinical":
        image = np.clip((image - F32(0.05)) * F32(1.1), 0.0, 1.0)
        image = image * image * (F32(3.0) - F32(2.0) * image) * F32(0.6) + image * F32(0.4)
        image = blur3(image, passes=max(1, round(image.shape[0] / 128)))
    return image * F32(float(np.clip(anatomy.exposure, 0.3, 2.0)))


def add_noise(image: np.ndarray, anatomy: Anatomy, style: str, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise at full resolution: white for "clean"; grainier, correlated, with grid lines for "clinical"."""
    size = image.shape[0]
    sigma = float(np.clip(anatomy.noise_sigma, 0.0, 0.2))
    if style != "clinical":
        return image + noise_crop(size, False, rng) * F32(sigma)
    noise = noise_crop(size, True, rng) * F32(0.9 * sigma + 0.005)
    noise += noise_crop(size, False, rng) * F32(0.5 * sigma)
    period = max(3, size // 85)  # faint anti-scatter grid lines
    noise += ((np.arange(size) % period == 0) * F32(0.015))[None, :]
    return image + noise


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Clip [0, 1] intensities and quantise to 8 bits."""
    return (np.clip(image, 0.0, 1.0) * F32(255.0) + F32(0.5)).astype(np.uint8)


@lru_cache(maxsize=8)
def _font(pixels: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at ``pixels`` height (no system fonts needed)."""
    return ImageFont.load_default(size=max(6, pixels))


def clinical_finish(
    image: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, avoid: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Collimation borders and burned-in annotations, drawn on the uint8 image.

    ``avoid`` is the corner (0 TL, 1 TR, 2 BL, 3 BR) holding the confounder marker; text avoids it.
    Returns the finished image and a boolean mask of the pixels the borders and text cover: whatever
    lay there (the end of a line or tube, say) is no longer visible.
    """
    size = image.shape[0]
    out = image.copy()
    # Collimation: unexposed (bright) straight borders on one to three sides, outside the lungs.
    borders = []
    for side in rng.permutation(4)[: int(rng.integers(1, 4))]:
        width = int(rng.uniform(0.015, 0.04) * size) + 1
        level = np.uint8(rng.integers(200, 236))
        out[_edge(int(side), width)] = level
        borders.append((int(side), width))
    covered = np.zeros(out.shape, dtype=bool)
    for side, width in borders:
        covered[_edge(side, width)] = True
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    free = [corner for corner in (0, 1, 2, 3) if corner != avoid]
    corners = [int(c) for c in rng.permutation(free)]
    # Side marker: "L" sits on the patient's left = image right (corners 1, 3), "R" on image left.
    marker_corner = corners[0]
    letter = "L" if marker_corner in (1, 3) else "R"
    _text(draw, letter, marker_corner, size, 0.07, fill=255)
    if anatomy.view == "AP" or rng.random() < 0.4:
        _text(draw, "PORTABLE" if anatomy.view == "AP" else "PA ERECT", corners[1], size, 0.045, fill=235)
    finished = np.asarray(pil)
    return finished, covered | (finished != out)


def _edge(side: int, width: int) -> tuple[slice, slice]:
    """The ``width`` pixels along one side of the image: 0 top, 1 bottom, 2 left, 3 right."""
    whole = slice(None)
    return {
        0: (slice(None, width), whole),
        1: (slice(-width, None), whole),
        2: (whole, slice(None, width)),
        3: (whole, slice(-width, None)),
    }[side]


def text_mask(text: str, corner: int, size: int, height: float, inset: float) -> np.ndarray:
    """The pixels of ``text`` drawn ``height * size`` tall in ``corner``, ``inset * size`` from its
    borders, as a boolean ``(size, size)`` mask (for burned-in text that needs its own mask)."""
    canvas = Image.new("L", (size, size), 0)
    _text(ImageDraw.Draw(canvas), text, corner, size, height, fill=255, inset=inset)
    return np.asarray(canvas) >= 128


def _text(
    draw: ImageDraw.ImageDraw,
    text: str,
    corner: int,
    size: int,
    height: float,
    fill: int,
    inset: float = 0.065,  # inside the widest collimation border (4 %)
) -> None:
    """Draw ``text`` in a corner, ``inset * size`` from the borders."""
    font = _font(int(height * size))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    margin = int(inset * size)
    x = margin if corner in (0, 2) else size - margin - (right - left)
    y = margin if corner in (0, 1) else size - margin - (bottom - top)
    draw.text((x - left, y - top), text, fill=fill, font=font)
