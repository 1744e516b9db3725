"""Vectorised drawing primitives for the RadPhantom renderer.

Everything is drawn in the *patient frame*: ``u`` is the horizontal offset from the patient's midline
and ``v`` the vertical position, both as fractions of the image width (the image is square). The
:class:`Frame` holds, for every pixel, the patient-frame coordinates it shows, so rotating or shifting
the patient is a change of coordinates: image and masks are drawn already rotated and always agree,
with no resampling. Small shapes are evaluated only inside a :meth:`Frame.window`, which keeps the
renderer fast (a few ms per 256 px study): full-image numpy passes are the budget that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

Window = tuple[slice, slice]
F32 = np.float32


@lru_cache(maxsize=8)
def _centred_axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates minus 0.5, as a (1, S) row and an (S, 1) column (cached per size)."""
    axis = ((np.arange(size, dtype=F32) + 0.5) / size - 0.5).astype(F32)
    return axis[None, :], axis[:, None]


@dataclass(frozen=True, slots=True)
class Frame:
    """Patient-frame coordinates ``u`` (from the midline) and ``v`` (from the top) of every pixel."""

    size: int
    cos: float
    sin: float
    shift: float
    u: np.ndarray
    v: np.ndarray

    @classmethod
    def make(cls, size: int, rotation_deg: float, shift: float) -> Frame:
        """The frame of a patient rotated by ``rotation_deg`` about the image centre, shifted by ``shift``."""
        cos, sin = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
        x, y = _centred_axes(size)
        u = (x * F32(cos) + y * F32(sin)) - F32(shift)
        v = (y * F32(cos) - x * F32(sin)) + F32(0.5)
        return cls(size, cos, sin, shift, u, v)

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous image coordinates (column, row; pixel ``j`` spans ``[j, j+1)``) of patient points."""
        px, py = np.asarray(u, dtype=np.float64) + self.shift, np.asarray(v, dtype=np.float64) - 0.5
        col = (self.cos * px - self.sin * py + 0.5) * self.size
        row = (self.sin * px + self.cos * py + 0.5) * self.size
        return col, row

    def window(self, u0: float, v0: float, u1: float, v1: float) -> Window | None:
        """Pixel slices covering the patient-frame box ``[u0, u1] x [v0, v1]``; ``None`` if off-image.

        Plain float arithmetic on the 4 corners: called ~15 times per study, numpy would be overhead.
        """
        cos, sin, size = self.cos, self.sin, self.size
        cols, rows = [], []
        for u in (u0, u1):
            for v in (v0, v1):
                x, y = u + self.shift, v - 0.5
                cols.append((cos * x - sin * y + 0.5) * size)
                rows.append((sin * x + cos * y + 0.5) * size)
        c0, c1 = max(math.floor(min(cols)) - 1, 0), min(math.ceil(max(cols)) + 1, size)
        r0, r1 = max(math.floor(min(rows)) - 1, 0), min(math.ceil(max(rows)) + 1, size)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def box(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The ``u``/``v`` coordinates inside a window (views, no copy)."""
        return self.u[window], self.v[window]

    def resized(self, size: int) -> Frame:
        """The same patient pose at another image size."""
        angle = math.degrees(math.atan2(self.sin, self.cos))
        return Frame.make(size, angle, self.shift)

    @property
    def pixel(self) -> float:
        """One pixel, in patient-frame units."""
        return 1.0 / self.size


def ramp(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-ness in [0, 1]: 0.5 on the boundary, rising over ``edge`` (positive = inside)."""
    out = signed_distance * F32(1.0 / edge)
    out += F32(0.5)
    return out.clip(0.0, 1.0, out=out)


def ellipse_r2(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    """Squared normalised radius of an axis-aligned ellipse (< 1 inside)."""
    du, dv = (u - F32(cu)) * F32(1.0 / au), (v - F32(cv)) * F32(1.0 / av)
    return du * du + dv * dv


def dome(r2: np.ndarray) -> np.ndarray:
    """Path length through a sphere/ellipsoid at normalised squared radius ``r2`` (1 at the centre)."""
    return np.sqrt(np.clip(F32(1.0) - r2, 0.0, 1.0))


def segment_distance(
    u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    """Distance from each point to the segment ``a``-``b`` (patient-frame units)."""
    du, dv = b[0] - a[0], b[1] - a[1]
    inv = 1.0 / max(du * du + dv * dv, 1e-12)
    pu, pv = u - F32(a[0]), v - F32(a[1])
    t = np.clip((pu * F32(du) + pv * F32(dv)) * F32(inv), 0.0, 1.0)
    eu, ev = pu - t * F32(du), pv - t * F32(dv)
    return np.sqrt(eu * eu + ev * ev)


def blur3(image: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing with clamped edges, ``passes`` times.

    Hand-written because scipy.ndimage/PIL filters cost 0.5-1.5 ms at 256 px, several times this.
    """
    out = image.astype(F32, copy=True)
    for _ in range(passes):
        for axis in (0, 1):
            moved = np.moveaxis(out, axis, 0)
            res = moved * F32(0.5)
            res[1:] += moved[:-1] * F32(0.25)
            res[:-1] += moved[1:] * F32(0.25)
            res[0] += moved[0] * F32(0.25)
            res[-1] += moved[-1] * F32(0.25)
            out = np.moveaxis(res, 0, axis)
    return np.ascontiguousarray(out)


def splat(frame: Frame, u: np.ndarray, v: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accumulate weighted patient-frame points into a full-size image, bilinearly (anti-aliased).

    Points whose 2x2 neighbourhood leaves the image are dropped (strokes never reach the border).
    """
    size = frame.size
    col, row = frame.to_pixels(u, v)
    col -= 0.5  # pixel centres at integers
    row -= 0.5
    c0, r0 = np.floor(col), np.floor(row)
    ok = (c0 >= 0) & (c0 < size - 1) & (r0 >= 0) & (r0 < size - 1)
    c0, r0, fc, fr, w = c0[ok], r0[ok], (col - c0)[ok], (row - r0)[ok], weights[ok]
    base = (r0 * size + c0).astype(np.int64)
    low = w * fr  # weight of the lower row
    up = w - low
    idx = np.concatenate([base, base + 1, base + size, base + size + 1])
    wts = np.concatenate([up - up * fc, up * fc, low - low * fc, low * fc])
    return np.bincount(idx, weights=wts, minlength=size * size).reshape(size, size).astype(F32)


def sample_segments(a: np.ndarray, b: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points at most ``step`` apart along segments ``a[i]``-``b[i]`` (arrays (n, 2)).

    Returns u, v and the segment index of each point; one vectorised pass for any mix of lengths.
    """
    d = b - a
    counts = np.maximum(2, np.ceil(np.hypot(d[:, 0], d[:, 1]) / step).astype(np.int64) + 1)
    seg = np.repeat(np.arange(len(a)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(seg.size) - first) / (counts[seg] - 1)
    return a[seg, 0] + d[seg, 0] * t, a[seg, 1] + d[seg, 1] * t, seg


def bezier(points: list[tuple[float, float]], count: int = 24) -> np.ndarray:
    """A smooth curve through control ``points`` (Bernstein form), ``count`` samples (count, 2)."""
    ctrl = np.asarray(points, dtype=np.float64)
    n = len(ctrl) - 1
    t = np.linspace(0.0, 1.0, count)[:, None]
    coeff = [math.comb(n, k) * t**k * (1 - t) ** (n - k) for k in range(n + 1)]
    return sum((c * p for c, p in zip(coeff, ctrl, strict=True)), np.zeros((count, 2)))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float image to ``size`` x ``size`` (PIL, in C)."""
    return np.asarray(
        Image.fromarray(image.astype(F32, copy=False), mode="F").resize(
            (size, size), Image.Resampling.BILINEAR
        )
    )


def upsample2(image: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling, pixel-centre aligned (matches PIL's BILINEAR resize).

    Hand-written: explicit slice passes run several times faster than PIL's float resize.
    """
    a = image.astype(F32, copy=False)
    n, m = a.shape
    rows = np.empty((2 * n, m), dtype=F32)
    quarter = (a[1:] - a[:-1]) * F32(0.25)
    rows[2::2] = a[1:] - quarter
    rows[1:-1:2] = a[:-1] + quarter
    rows[0], rows[-1] = a[0], a[-1]
    out = np.empty((2 * n, 2 * m), dtype=F32)
    quarter = (rows[:, 1:] - rows[:, :-1]) * F32(0.25)
    out[:, 2::2] = rows[:, 1:] - quarter
    out[:, 1:-1:2] = rows[:, :-1] + quarter
    out[:, 0], out[:, -1] = rows[:, 0], rows[:, -1]
    return out


def upsample2_mask(mask: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 2x upsampling of a boolean mask."""
    n, m = mask.shape
    out = np.empty((2 * n, 2 * m), dtype=bool)
    out[0::2, 0::2] = mask
    out[0::2, 1::2] = mask
    out[1::2] = out[0::2]
    return out


@lru_cache(maxsize=6)
def _noise_bank(size: int, correlated: bool) -> np.ndarray:
    """A (2S, 2S) unit-variance noise field, made once per size; studies take seeded crops of it.

    Drawing fresh Gaussian noise costs ~1 ms per 256 px image, a fifth of the whole budget; a random
    crop (with a random flip) of a fixed field is as good for quantum mottle and ~50x cheaper.
    """
    field = np.random.default_rng(20240601 + size).standard_normal((2 * size, 2 * size), dtype=np.float32)
    if correlated:
        field = blur3(field, passes=2)
        field /= field.std()
    field.flags.writeable = False
    return field


def noise_crop(size: int, correlated: bool, rng: np.random.Generator) -> np.ndarray:
    """A seeded size x size crop of the noise bank."""
    bank = _noise_bank(size, correlated)
    r, c = (int(x) for x in rng.integers(0, size, 2))
    crop = bank[r : r + size, c : c + size]
    return crop[::-1] if rng.random() < 0.5 else crop
