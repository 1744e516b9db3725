"""Findings for RadPhantom: each one edits the :class:`Body` layers and returns its mask.

Appearance follows meaning: fluid replaces lung air from the bottom up under a meniscus; a
pneumothorax is a peripheral air space with no vessels, bounded by a thin visceral pleural line;
consolidation is dense with air bronchograms; edema is perihilar haze with Kerley lines; etc. Each
present spatial finding gets a non-empty boolean mask (the pixel at the finding's centre at least).
``side`` is the patient's side (right = image left); ``zone`` is a third of the lung's height.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from radlens.phantom._anatomy import (
    RIB_WIDTH,
    SIDES,
    SIGN,
    Body,
    rib_centre,
    rib_field,
    rib_phase,
    side_index,
)
from radlens.phantom._devices import draw_devices
from radlens.phantom._raster import F32, Window, dome, ellipse_r2, ramp, segment_distance
from radlens.phantom.spec import Finding, StudySpec

#: Findings whose masks make up "Lung Opacity".
OPACITIES: tuple[str, ...] = ("Atelectasis", "Consolidation", "Edema", "Pneumonia", "Lung Lesion")
_LEVEL = {"small": 0, "moderate": 1, "large": 2}


def draw_findings(spec: StudySpec, body: Body, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw every present finding of ``spec`` into ``body``; return one mask per spatial finding."""
    masks: dict[str, np.ndarray] = {}
    present = spec.present()
    for finding in present:
        draw = _DRAWERS.get(finding.name)
        if draw is None:
            continue
        mask = draw(finding, body, rng, spec)
        masks[finding.name] = masks[finding.name] | mask if finding.name in masks else mask
    if any(finding.name == "Lung Opacity" for finding in present):
        union = [masks[name] for name in OPACITIES if name in masks]
        if union:
            masks["Lung Opacity"] = np.logical_or.reduce(union)
        else:  # labelled opacity without a more specific finding: a patchy airspace opacity
            opacity = next(f for f in present if f.name == "Lung Opacity")
            masks["Lung Opacity"] = _pneumonia(opacity, body, rng, spec)
    return masks


# --------------------------------------------------------------------------------------------- helpers
def _sides(finding: Finding, rng: np.random.Generator) -> list[int]:
    """Patient sides a finding occupies: both for "bilateral", a random one when unspecified."""
    if finding.side == "bilateral":
        return [0, 1]
    if finding.side in SIDES:
        return [side_index(finding.side)]
    return [int(rng.integers(0, 2))]


def _level(finding: Finding, default: str = "moderate") -> int:
    """0 small, 1 moderate, 2 large."""
    return _LEVEL.get(finding.severity or default, 1)


def _spot(body: Body, side: int, zone: str, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A point inside one lung's zone with about ``margin`` of lung around it (rejection sampling)."""
    geo, frame = body.geo, body.frame
    lo, hi = geo.zone_band(side, zone)
    lung = body.lung_mask(side)
    size = frame.size
    for attempt in range(24):
        m = margin * (1.0 - attempt / 24)
        v = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
        au = rng.uniform(max(geo.med[side], 0.05) + m, geo.hw - m)
        u = SIGN[side] * au
        pts_u = np.array([u, u - m, u + m, u, u])
        pts_v = np.array([v, v, v, v - m, v + m])
        col, row = frame.to_pixels(pts_u, pts_v)
        ci, ri = np.clip(col.astype(int), 0, size - 1), np.clip(row.astype(int), 0, size - 1)
        if lung[ri, ci].all():
            return u, v
    # Fallback: the lung pixel of this zone nearest the zone's centre line.
    inside = lung & (frame.v >= F32(lo)) & (frame.v <= F32(hi))
    rows, cols = np.nonzero(inside if inside.any() else lung)
    if rows.size == 0:
        return SIGN[side] * geo.hw / 2, (lo + hi) / 2
    target_u, target_v = SIGN[side] * geo.hw * 0.55, (lo + hi) / 2
    cost = (frame.u[rows, cols] - target_u) ** 2 + (frame.v[rows, cols] - target_v) ** 2
    k = int(np.argmin(cost))
    return float(frame.u[rows[k], cols[k]]), float(frame.v[rows[k], cols[k]])


def _window(body: Body, u: float, v: float, ru: float, rv: float) -> Window | None:
    """Window around a patient-frame box centred at (u, v)."""
    return body.frame.window(u - ru, v - rv, u + ru, v + rv)


def _ensure(mask: np.ndarray, body: Body, u: float, v: float) -> np.ndarray:
    """Guarantee a non-empty mask: a finding smaller than a pixel still marks the pixel it is in."""
    if not mask.any():
        col, row = body.frame.to_pixels(np.array([u]), np.array([v]))
        size = body.frame.size
        mask[int(np.clip(row[0], 0, size - 1)), int(np.clip(col[0], 0, size - 1))] = True
    return mask


def _opacify(body: Body, win: Window, fill: np.ndarray, strength: float, extra: float = 0.0) -> None:
    """Replace a fraction of the lung air in ``win`` by tissue/fluid; vessels are obscured with it."""
    body.air[win] *= F32(1.0) - fill * F32(strength)
    body.markings[win] *= F32(1.0) - fill * F32(min(1.0, strength))
    if extra:
        body.soft[win] += fill * F32(extra)


def _texture(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smooth random field in about [-1, 1] with features of size ~``scale`` (sum of plane waves)."""
    out = np.zeros(u.shape, dtype=F32)
    for _ in range(3):
        theta = rng.uniform(0, np.pi)
        k = F32(rng.uniform(0.7, 1.4) * 2 * np.pi / scale)
        out += np.sin((u * F32(np.cos(theta)) + v * F32(np.sin(theta))) * k + F32(rng.uniform(0, 2 * np.pi)))
    return out * F32(1 / 3)


def _empty(body: Body) -> np.ndarray:
    return np.zeros(body.air.shape, dtype=bool)


# --------------------------------------------------------------------------------------------- pleura
def _effusion(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Dependent fluid: opacity rising from the costophrenic angle under a meniscus (higher laterally)."""
    geo, frame = body.geo, body.frame
    height = (0.075, 0.14, 0.25)[_level(finding)] * rng.uniform(0.9, 1.1)
    mask = _empty(body)
    for side in _sides(finding, rng):
        s, cp = SIGN[side], geo.cp[side]
        meniscus = 0.04 + 0.15 * height
        win = frame.window(
            min(0.0, s * (geo.hw + 0.03)),
            cp - height - meniscus - 0.03,
            max(0.0, s * (geo.hw + 0.03)),
            cp + 0.03,
        )
        if win is None:
            continue
        u, v = frame.box(win)
        au = np.abs(u)
        lat = np.clip((au - F32(0.3 * geo.hw)) * F32(1 / (0.7 * geo.hw)), 0.0, 1.0)
        below = v - (F32(cp - height) - lat * lat * F32(meniscus))
        lung = body.lung_mask(side)[win]
        fill = ramp(below, 0.02) * body.lung[win]
        _opacify(body, win, fill, 0.98, extra=0.3)
        mask[win] |= lung & (below > 0)
        _ensure(mask, body, s * geo.hw * 0.85, cp - 0.01)
    return mask


def _pneumothorax(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Air between lung and chest wall: no vessels beyond a thin visceral pleural line (apical/lateral)."""
    geo, frame = body.geo, body.frame
    level = _level(finding)
    depth = (0.03, 0.055, 0.095)[level] * rng.uniform(0.9, 1.1)
    reach = (geo.apex + 0.22, geo.apex + 0.42, geo.cp[0] + 0.1)[level]  # how far down it extends
    line = max(0.0015, 0.5 * frame.pixel)  # half-width of the hairline visceral pleura
    mask = _empty(body)
    for side in _sides(finding, rng):
        s = SIGN[side]
        win = frame.window(min(0.0, s * geo.hw), geo.apex - 0.02, max(0.0, s * geo.hw), max(geo.cp) + 0.02)
        if win is None:
            continue
        u, v = frame.box(win)
        au = np.abs(u)
        wall = np.minimum(body.hwt[win] - au, (v - geo.thorax_top(au)) * F32(1.3))
        local = F32(depth) * np.clip((F32(reach) - v) * F32(1 / 0.12), 0.0, 1.0)
        lung = body.lung_mask(side)[win]
        gap = ramp(local - wall, frame.pixel) * body.lung[win]
        body.markings[win] *= F32(1.0) - gap
        body.air[win] += gap * F32(0.08)
        if level == 2:  # the collapsing lung is denser
            body.air[win] *= F32(1.0) - (F32(1.0) - gap) * body.lung[win] * F32(0.15)
        pleura = ramp(F32(line) - np.abs(wall - local), frame.pixel) * (local > 0) * body.lung[win]
        body.soft[win] += pleura * F32(0.35)
        mask[win] |= lung & (wall < local - F32(line + frame.pixel))
        _ensure(mask, body, s * geo.hw * 0.5, geo.apex + 0.01)
    return mask


def _pleural_other(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Pleural thickening / plaques: a lumpy band of soft tissue along the lateral chest wall."""
    geo, frame = body.geo, body.frame
    mask = _empty(body)
    for side in _sides(finding, rng):
        s = SIGN[side]
        lo, hi = geo.zone_band(side, finding.zone) if finding.zone else (geo.apex + 0.15, geo.cp[side] - 0.03)
        win = frame.window(min(s * (geo.hw - 0.06), s * geo.hw), lo, max(s * (geo.hw - 0.06), s * geo.hw), hi)
        if win is None:
            continue
        u, v = frame.box(win)
        bumps = np.clip(np.sin(v * F32(rng.uniform(60, 90)) + F32(rng.uniform(0, 6.3))), 0.0, None)
        thick = F32(rng.uniform(0.007, 0.011)) + bumps * F32(rng.uniform(0.006, 0.012))
        inner = body.hwt[win] - np.abs(u)
        band = ramp(thick - inner, frame.pixel) * ramp(v - F32(lo), 0.01) * ramp(F32(hi) - v, 0.01)
        band *= body.lung[win]
        _opacify(body, win, band, 0.9, extra=0.15)
        mask[win] |= (band > 0.5) & body.lung_mask(side)[win]
        _ensure(mask, body, s * (geo.hw - 0.005), (lo + hi) / 2)
    return mask


# --------------------------------------------------------------------------------------------- lungs
def _consolidation(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Dense airspace opacity at side + zone, with air bronchograms branching through it."""
    return _airspace(finding, body, rng, patchy=False, default_zone="lower")


def _pneumonia(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Patchy, ill-defined airspace opacity at side + zone."""
    return _airspace(finding, body, rng, patchy=True, default_zone="lower")


def _airspace(
    finding: Finding, body: Body, rng: np.random.Generator, patchy: bool, default_zone: str
) -> np.ndarray:
    frame = body.frame
    level = _level(finding)
    mask = _empty(body)
    for side in _sides(finding, rng):
        ru = (0.045, 0.065, 0.09)[level] * rng.uniform(0.85, 1.15)
        rv = ru * rng.uniform(0.7, 1.0)
        cu, cv = _spot(body, side, finding.zone or default_zone, rng, margin=0.5 * rv)
        win = _window(body, cu, cv, ru * 1.4, rv * 1.4)
        if win is None:
            continue
        u, v = frame.box(win)
        r2 = ellipse_r2(u, v, cu, cv, ru, rv) * (F32(1.0) + _texture(u, v, rng, 0.8 * ru) * F32(0.3))
        lung = body.lung[win]
        inside = ramp((F32(1.0) - r2) * F32(0.5 * rv), 0.006 if patchy else 0.003) * lung
        if patchy:
            inside *= np.clip(_texture(u, v, rng, 0.35 * ru) * F32(0.6) + F32(0.75), 0.0, 1.0)
        else:
            inside *= F32(1.0) - _bronchograms(u, v, cu, cv, ru, side, rng, frame.pixel) * F32(0.55)
        _opacify(body, win, inside, 0.75 if patchy else 0.92, extra=0.04)
        mask[win] |= (r2 < 1.0) & body.lung_mask(side)[win]
        _ensure(mask, body, cu, cv)
    return mask


def _bronchograms(
    u: np.ndarray,
    v: np.ndarray,
    cu: float,
    cv: float,
    r: float,
    side: int,
    rng: np.random.Generator,
    px: float,
) -> np.ndarray:
    """Dark branching tubes (air-filled bronchi) running from the hilar side of an opacity outward."""
    out = np.zeros(u.shape, dtype=F32)
    s = SIGN[side]
    start = (cu - s * 0.9 * r, cv + rng.uniform(-0.3, 0.3) * r)
    for _ in range(2):
        angle = rng.uniform(-0.5, 0.5)
        mid = (start[0] + s * 0.8 * r * np.cos(angle), start[1] + 0.8 * r * np.sin(angle))
        width = max(0.0035, 0.8 * px)
        for a, b in (
            (start, mid),
            (mid, (mid[0] + s * 0.6 * r, mid[1] - 0.35 * r)),
            (mid, (mid[0] + s * 0.6 * r, mid[1] + 0.35 * r)),
        ):
            out = np.maximum(out, ramp(F32(width) - segment_distance(u, v, a, b), px))
    return out


def _atelectasis(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Plate-like (linear) opacity, thicker with severity; usually in the lower zone."""
    frame = body.frame
    level = _level(finding, "small")
    mask = _empty(body)
    for side in _sides(finding, rng):
        cu, cv = _spot(body, side, finding.zone or "lower", rng, margin=0.03)
        half_len = (0.04, 0.055, 0.07)[level] * rng.uniform(0.85, 1.15)
        thick = (0.005, 0.009, 0.018)[level] + frame.pixel
        angle = rng.uniform(-0.3, 0.3)
        du, dv = half_len * np.cos(angle), half_len * np.sin(angle)
        win = _window(body, cu, cv, abs(du) + thick * 2, abs(dv) + thick * 2)
        if win is None:
            continue
        u, v = frame.box(win)
        dist = segment_distance(u, v, (cu - du, cv - dv), (cu + du, cv + dv))
        band = ramp(F32(thick) - dist, frame.pixel) * body.lung[win]
        _opacify(body, win, band, 0.9, extra=0.05)
        mask[win] |= (band > 0.5) & body.lung_mask(side)[win]
        _ensure(mask, body, cu, cv)
    return mask


def _edema(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Bilateral perihilar ("bat-wing") haze fading outward, plus Kerley B lines at the lung bases."""
    geo, frame = body.geo, body.frame
    level = _level(finding)
    amp = (0.35, 0.55, 0.75)[level]
    sides = [0, 1] if finding.side in (None, "bilateral") else _sides(finding, rng)
    mask = _empty(body)
    for side in sides:
        hu, hv = geo.hila[side]
        su, sv = (0.12, 0.15, 0.19)[level], (0.13, 0.16, 0.2)[level]
        cu = hu + SIGN[side] * 0.02
        win = _window(body, cu, hv, su, sv)
        if win is None:
            continue
        u, v = frame.box(win)
        haze = np.clip(F32(1.0) - ellipse_r2(u, v, cu, hv, su, sv), 0.0, 1.0)
        haze *= (
            np.clip(_texture(u, v, rng, 0.06) * F32(0.25) + F32(0.9), 0.0, 1.0) * F32(amp) * body.lung[win]
        )
        _opacify(body, win, haze, 1.0, extra=0.02)
        mask[win] |= (haze > 0.12) & body.lung_mask(side)[win]
        if level >= 1:
            mask |= _kerley_lines(body, side, rng, 4 + 3 * level)
        _ensure(mask, body, hu + SIGN[side] * 0.04, hv)
    return mask


def _kerley_lines(body: Body, side: int, rng: np.random.Generator, count: int) -> np.ndarray:
    """Short horizontal lines reaching the lateral pleura in the lower zone (thickened septa)."""
    geo, frame = body.geo, body.frame
    mask = _empty(body)
    lo, hi = geo.zone_band(side, "lower")
    s = SIGN[side]
    for v0 in rng.uniform(lo - 0.02, hi - 0.04, count):
        length = rng.uniform(0.015, 0.025)
        wall = geo.hw - 0.004
        a, b = (s * (wall - length), float(v0)), (s * wall, float(v0))
        win = frame.window(min(a[0], b[0]) - 0.005, v0 - 0.005, max(a[0], b[0]) + 0.005, v0 + 0.005)
        if win is None:
            continue
        u, v = frame.box(win)
        line = (
            ramp(F32(max(0.0015, 0.6 * frame.pixel)) - segment_distance(u, v, a, b), frame.pixel)
            * body.lung[win]
        )
        body.soft[win] += line * F32(0.3)
        mask[win] |= (line > 0.3) & body.lung_mask(side)[win]
    return mask


def _lesion(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Nodule (< 30 mm, round, well defined) or mass (lobulated) of ``size_mm`` (image ~ 400 mm wide)."""
    frame = body.frame
    mask = _empty(body)
    for side in _sides(finding, rng):
        size_mm = finding.size_mm or (
            rng.uniform(40, 60) if finding.severity == "large" else rng.uniform(8, 25)
        )
        r = float(np.clip(size_mm, 3, 120)) / 400 / 2
        r = max(r, 0.9 * frame.pixel)
        cu, cv = _spot(body, side, finding.zone or "middle", rng, margin=r + 0.01)
        win = _window(body, cu, cv, r * 1.3, r * 1.3)
        if win is None:
            continue
        u, v = frame.box(win)
        r2 = ellipse_r2(u, v, cu, cv, r, r)
        if size_mm >= 30:  # lobulated margin: radius modulated by cos(3 theta), no atan2 needed
            phi = rng.uniform(0, 2 * np.pi)
            c = ((u - F32(cu)) * F32(np.cos(phi)) + (v - F32(cv)) * F32(np.sin(phi))) / (
                np.sqrt(r2) * F32(r) + F32(1e-6)
            )
            r2 = r2 / (F32(1.0) + (F32(4.0) * c * c * c - F32(3.0) * c) * F32(0.12)) ** 2
        thick = dome(r2) * F32(0.12 + 5.0 * r)  # soft-tissue density, thicker for bigger lesions
        inside = ramp((F32(1.0) - r2) * F32(0.5 * r), frame.pixel)
        body.air[win] *= F32(1.0) - inside * F32(0.4)
        body.soft[win] += thick
        mask[win] |= r2 < 1.0
        _ensure(mask, body, cu, cv)
    return mask


# --------------------------------------------------------------------------------------------- other
def _cardiomegaly(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """The heart itself; its width (CTR > 0.5) was set in the geometry."""
    return body.masks["heart"].copy()


def _mediastinum(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """The widened upper mediastinum (widened in the geometry): between the lungs, above the heart."""
    geo, frame = body.geo, body.frame
    top, bottom = geo.apex + 0.06, geo.heart[1] - 0.6 * geo.heart[3]
    win = frame.window(-geo.med[0] - 0.03, top, geo.med[1] + 0.05, bottom)
    mask = _empty(body)
    if win is not None:
        u = frame.u[win]
        mask[win] = (u > F32(-geo.med[0] - 0.012)) & (u < F32(geo.med[1] + 0.012)) & (body.lung[win] < 0.5)
    return _ensure(mask, body, 0.0, (top + bottom) / 2)


def _fracture(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """A cortical break with a step: the lateral fragment of posterior rib ``rib`` is displaced."""
    geo, frame = body.geo, body.frame
    rib = int(np.clip(finding.rib or rng.integers(4, 9), 1, 11))
    mask = _empty(body)
    for side in _sides(finding, rng):
        s = SIGN[side]
        au0 = rng.uniform(0.55, 0.8) * geo.hw
        v0 = float(rib_centre(geo, rib, au0))
        half = 0.4 * geo.rib_sp + 0.01
        win = _window(body, s * au0, v0, 0.035, half + 0.02)
        if win is None:
            continue
        u, v = frame.box(win)
        au, hwt = np.abs(u), body.hwt[win]
        edge = max(0.0025, frame.pixel)
        slant = F32(0.35) * (v - F32(v0))
        lateral = ramp(au - F32(au0) - slant, frame.pixel)
        step = F32(0.5 * RIB_WIDTH * geo.rib_sp + frame.pixel)  # half a rib's height
        moved_v = v - lateral * step
        gap = ramp(F32(max(0.003, 0.8 * frame.pixel)) - np.abs(au - F32(au0) - slant), frame.pixel)
        # Only rib ``rib`` breaks: confine the edit to a band around its centre line.
        band = ramp(F32(0.6 * geo.rib_sp) - np.abs(v - rib_centre(geo, rib, au)), frame.pixel)
        old = rib_field(geo, au, v, hwt, edge, anterior=False)
        new = rib_field(geo, au, moved_v, hwt, edge, anterior=False) * (F32(1.0) - gap)
        reach = F32(0.035) - np.abs(au - F32(au0))  # the broken segment, both sides of the break
        body.bone[win] += (new - old) * band * ramp(reach, frame.pixel)
        for phase in (rib_phase(geo, au, v), rib_phase(geo, au, moved_v)):  # before and after the step
            mask[win] |= (
                (reach > 0) & (np.floor(phase) == rib - 1) & (phase - np.floor(phase) < F32(RIB_WIDTH))
            )
        _ensure(mask, body, s * au0, v0)
    return mask


def _devices(finding: Finding, body: Body, rng: np.random.Generator, spec: StudySpec) -> np.ndarray:
    """Support devices (tubes, lines, pacemaker): see ``_devices``."""
    return draw_devices(finding, body, rng, spec)


_Drawer = Callable[[Finding, Body, np.random.Generator, StudySpec], np.ndarray]
_DRAWERS: dict[str, _Drawer] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Enlarged Cardiomediastinum": _mediastinum,
    "Fracture": _fracture,
    "Lung Lesion": _lesion,
    "Pleural Effusion": _effusion,
    "Pleural Other": _pleural_other,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Support Devices": _devices,
}
