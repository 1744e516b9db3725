"""Support devices for RadPhantom: radiopaque tubes, lines and a pacemaker, drawn as polylines.

Devices are drawn with PIL (``ImageDraw.line`` with many points is one C call) on an 8-bit canvas in
image coordinates: patient-frame control points go through :meth:`Frame.to_pixels`, so devices rotate
with the patient. The canvas is both the device density and, where non-zero, the device mask.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from radlens.core import InputError
from radlens.phantom._anatomy import SIGN, Body, side_index
from radlens.phantom._raster import F32, bezier
from radlens.phantom.spec import Finding, StudySpec

DEVICE_KINDS: tuple[str, ...] = ("et_tube", "ng_tube", "central_line", "pacemaker", "chest_tube")
_DENSITY = 1.6  # attenuation of a fully radiopaque (255) device pixel


def draw_devices(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Draw the finding's devices (a random one if none listed); return the mask of device pixels."""
    kinds = tuple(dict.fromkeys(finding.devices)) or (DEVICE_KINDS[int(rng.integers(0, len(DEVICE_KINDS)))],)
    unknown = [kind for kind in kinds if kind not in _DRAW]
    if unknown:
        raise InputError(f"unknown support device {unknown[0]!r}", f"use one of: {', '.join(DEVICE_KINDS)}")
    size = body.frame.size
    canvas = Image.new("L", (size, size))
    draw = ImageDraw.Draw(canvas)
    for kind in kinds:
        _DRAW[kind](draw, body, rng, finding, spec)
    box = canvas.getbbox()
    mask = np.zeros((size, size), dtype=bool)
    if box is None:  # everything fell outside the image: mark the tip of a central line
        mask[size // 3, size // 2] = True
        return mask
    c0, r0, c1, r1 = box
    layer = np.asarray(canvas.crop(box), dtype=F32) * F32(_DENSITY / 255)
    body.soft[r0:r1, c0:c1] += layer
    mask[r0:r1, c0:c1] = layer > 0
    return mask


def _line(draw: ImageDraw.ImageDraw, body: Body, points: np.ndarray, width: float, fill: int) -> None:
    """Polyline through patient-frame ``points`` (n, 2), ``width`` in patient units (>= 1 px)."""
    col, row = body.frame.to_pixels(points[:, 0], points[:, 1])
    xy = list(zip((col - 0.5).tolist(), (row - 0.5).tolist(), strict=True))
    draw.line(xy, fill=fill, width=max(1, round(width * body.frame.size)), joint="curve")


def _tube(draw: ImageDraw.ImageDraw, body: Body, points: np.ndarray, width: float) -> None:
    """A plastic tube (faint) with a radiopaque stripe (bright) along it."""
    _line(draw, body, points, width, 70)
    _line(draw, body, points, 0.004, 255)


def _et_tube(
    draw: ImageDraw.ImageDraw, body: Body, rng: np.random.Generator, finding: Finding, spec: StudySpec
) -> None:
    """Endotracheal tube down the trachea, tip a few cm above the carina."""
    tip = body.geo.carina - rng.uniform(0.03, 0.06)
    _tube(draw, body, bezier([(0.012, -0.02), (-0.004, tip * 0.5), (0.002, tip)]), 0.016)


def _ng_tube(
    draw: ImageDraw.ImageDraw, body: Body, rng: np.random.Generator, finding: Finding, spec: StudySpec
) -> None:
    """Nasogastric tube down the oesophagus, through the diaphragm, tip curling in the stomach."""
    g = body.geo
    d = g.dome[1]
    pts = [(0.018, -0.02), (0.01, 0.35), (0.03, d), (0.09, d + 0.07), (0.15 + rng.uniform(0, 0.04), d + 0.05)]
    _line(draw, body, bezier(pts, 40), 0.006, 210)


def _central_line(
    draw: ImageDraw.ImageDraw, body: Body, rng: np.random.Generator, finding: Finding, spec: StudySpec
) -> None:
    """Right subclavian central venous catheter, tip in the SVC."""
    g = body.geo
    tip = g.carina + rng.uniform(0.0, 0.06)
    pts = [(-g.hw, g.apex + 0.06), (-0.14, g.apex + 0.1), (-0.04, g.apex + 0.1), (-g.med[0] + 0.02, tip)]
    _line(draw, body, bezier(pts, 40), 0.005, 235)


def _pacemaker(
    draw: ImageDraw.ImageDraw, body: Body, rng: np.random.Generator, finding: Finding, spec: StudySpec
) -> None:
    """Left pectoral generator with two leads into the right atrium and right ventricle."""
    g = body.geo
    hu, hv, ha, hb = g.heart
    gen = (0.24 + rng.uniform(-0.02, 0.02), g.apex + 0.08 + rng.uniform(-0.02, 0.02))
    svc = (-g.med[0] + 0.025, g.carina + 0.02)
    ra = [gen, (0.12, gen[1] - 0.03), (-0.02, g.apex + 0.05), svc, (hu - 0.6 * ha, hv - 0.2 * hb)]
    rv = [gen, (0.12, gen[1] - 0.02), (-0.03, g.apex + 0.07), svc, (hu, hv), (hu + 0.6 * ha, hv + 0.45 * hb)]
    for pts in (ra, rv):
        _line(draw, body, bezier(pts, 48), 0.005, 255)
    col, row = body.frame.to_pixels(np.array([gen[0]]), np.array([gen[1]]))
    half_w, half_h = 0.035 * body.frame.size, 0.024 * body.frame.size
    c, r = float(col[0]), float(row[0])
    draw.rounded_rectangle((c - half_w, r - half_h, c + half_w, r + half_h), radius=half_h * 0.6, fill=255)
    draw.rectangle((c - half_w * 0.5, r - half_h * 0.35, c + half_w * 0.3, r + half_h * 0.35), fill=205)


def _chest_tube(
    draw: ImageDraw.ImageDraw, body: Body, rng: np.random.Generator, finding: Finding, spec: StudySpec
) -> None:
    """Chest drain through the lateral wall, running up towards the apex.

    Its side is the finding's ``side`` (the sampler sets it to the drained side); otherwise the side of
    a one-sided pneumothorax or effusion; otherwise random.
    """
    g = body.geo
    drained = [f.side for f in spec.present() if f.name in ("Pneumothorax", "Pleural Effusion")]
    sides = [side for side in (finding.side, *drained) if side in ("right", "left")]
    side = side_index(sides[0]) if sides else int(rng.integers(0, 2))
    s = SIGN[side]
    entry = (s * (g.hw + 0.07), g.cp[side] - 0.1)
    pts = [entry, (s * (g.hw - 0.02), g.cp[side] - 0.14), (s * 0.2, g.apex + 0.2), (s * 0.15, g.apex + 0.07)]
    _tube(draw, body, bezier(pts, 40), 0.012)


_DRAW: dict[str, Callable[[ImageDraw.ImageDraw, Body, np.random.Generator, Finding, StudySpec], None]] = {
    "et_tube": _et_tube,
    "ng_tube": _ng_tube,
    "central_line": _central_line,
    "pacemaker": _pacemaker,
    "chest_tube": _chest_tube,
}
