"""Normal chest anatomy for RadPhantom: geometry from :class:`Anatomy`, then density layers and masks.

The picture is an attenuation map ``D`` (see :meth:`Body.attenuation`): soft tissue thickness of the
body, minus the air in the lungs, plus bones, vessels and anything the findings add. Dense = bright,
as a radiograph is displayed. Units are fractions of the image width in the patient frame (see
``_raster``); index 0 of a per-side pair is the patient's RIGHT (image left, ``u < 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from radlens.phantom._raster import (
    F32,
    Frame,
    blur3,
    dome,
    ellipse_r2,
    noise_crop,
    ramp,
    resize,
    sample_segments,
    segment_distance,
    splat,
    upsample2,
)
from radlens.phantom.spec import StudySpec

RIB_BEND, RIB_WIDTH, RIB_PEAK = 0.8, 0.4, 0.09  # posterior rib curvature and width (fraction of the spacing)
SIDES: tuple[str, str] = ("right", "left")
SIGN: tuple[float, float] = (-1.0, 1.0)  # u direction of each patient side
AIR_GAIN = 1.15  # attenuation removed by a full-thickness lung
PARENCHYMA = 0.13  # strength of the fine lung texture
HEART_TILT = 0.3  # vertical shear of the heart ellipse (keeps its width, tips the apex down)


def side_index(side: str) -> int:
    """0 for the patient's right, 1 for the left."""
    return SIDES.index(side)


@dataclass(slots=True)
class Geometry:
    """Where every structure is, derived once per study from the spec's :class:`Anatomy`."""

    view: str
    hw: float  # thorax (inner rib cage) half-width
    hb: float  # body half-width
    apex: float  # v of the lung apices
    full: float  # v below which the thorax has its full width
    dome: tuple[float, float]  # hemidiaphragm peak v (right, left)
    dome_u: float  # |u| of the dome peaks
    cp: tuple[float, float]  # costophrenic angle v (right, left): lowest lung point
    heart: tuple[float, float, float, float]  # centre u, centre v, half-width, half-height
    med: tuple[float, float]  # upper mediastinum half-widths (right, left)
    knob: tuple[float, float, float]  # aortic knob centre u, v, radius
    carina: float
    rib0: float  # v of the top of posterior rib 1 at the spine
    rib_sp: float  # rib spacing
    hila: tuple[tuple[float, float], tuple[float, float]]
    soft: float  # soft-tissue attenuation at the midline
    ctr: float  # the cardiothoracic ratio actually drawn

    def diaphragm(self, au: np.ndarray, side: int) -> np.ndarray:
        """Dome height v at ``|u| = au`` for one side (parabola through the peak and the CP angle)."""
        k = (self.cp[side] - self.dome[side]) / (self.hw - self.dome_u) ** 2
        d = au - F32(self.dome_u)
        return d * d * F32(k) + F32(self.dome[side])

    def thorax_halfwidth(self, v: np.ndarray) -> np.ndarray:
        """Inner rib-cage half-width at height ``v``: widening gently down to ``full``, then straight."""
        t = np.clip(F32(self.full) - v, 0.0, None)
        return F32(self.hw) - t * t * F32(0.13 / (self.full - self.apex) ** 2)

    def body_half(self, v: np.ndarray) -> np.ndarray:
        """Half-width of the body outline at height ``v``: a narrow neck rounding into the shoulders."""
        shoulder = np.sqrt(np.clip(v * F32(1 / 0.17), 0.0, 1.0))
        return shoulder * F32(self.hb - 0.075) + F32(0.075)

    def thorax_top(self, au: np.ndarray) -> np.ndarray:
        """v of the top of the rib cage / lung apices at ``|u| = au``: one rounded dome per lung."""
        d = au - F32(0.5 * self.hw)
        return d * d * F32(1.5 / self.hw) + F32(self.apex)

    def zone_band(self, side: int, zone: str) -> tuple[float, float]:
        """The v range of the upper/middle/lower third of one lung."""
        top, bottom = self.apex, self.cp[side]
        third = (bottom - top) / 3
        k = {"upper": 0, "middle": 1, "lower": 2}[zone]
        return top + k * third, top + (k + 1) * third


def make_geometry(spec: StudySpec, rng: np.random.Generator) -> Geometry:
    """Turn the per-patient :class:`Anatomy` numbers (plus cardiomegaly / mediastinum findings) into geometry."""
    a = spec.anatomy
    ap = a.view == "AP"
    hw = float(np.clip(a.thorax_width, 0.5, 0.86)) / 2
    hb = max(float(a.body_width) / 2, hw + 0.04)
    insp = float(np.clip(a.inspiration, 0.0, 1.0))
    apex = 0.085 + 0.02 * (1 - insp) + rng.uniform(-0.008, 0.008)
    dome_r = 0.56 + 0.13 * insp + (0.015 if ap else 0.0) + rng.uniform(-0.01, 0.01)
    dome_l = dome_r + rng.uniform(0.015, 0.035)
    drop = 0.07 + 0.02 * insp
    cp = (dome_r + drop, dome_l + drop)
    full = dome_r + 0.4 * drop

    # The CTR the masks will measure: the cardiomegaly label decides which side of 0.5 it falls on.
    ctr = float(a.ctr) * (1.06 if ap else 1.0)
    ctr = float(np.clip(ctr, 0.555, 0.72)) if spec.has("Cardiomegaly") else float(np.clip(ctr, 0.33, 0.465))
    width = ctr * 2 * hw
    heart_half_h = 0.05 + 0.75 * width * 0.5
    heart = (0.15 * width, dome_l - 0.06, width / 2, heart_half_h)

    widen = 0.0
    for finding in spec.present():
        if finding.name == "Enlarged Cardiomediastinum":
            widen = {"small": 0.025, "moderate": 0.04, "large": 0.055}.get(
                finding.severity or "moderate", 0.04
            )
    med = (0.058 + widen + rng.uniform(-0.005, 0.005), 0.052 + widen + rng.uniform(-0.005, 0.005))
    knob_r = 0.026 + rng.uniform(-0.003, 0.004)
    knob = (med[1] - 0.004, 0.245 + 0.2 * (apex - 0.09), knob_r)
    carina = 0.30 + 0.25 * (dome_r - 0.62)
    rib0 = apex - 0.025
    rib_sp = (dome_r + 0.03 - rib0) / (8.7 + 1.6 * insp)
    hila = ((-(med[0] + 0.04), carina + 0.075), (med[1] + 0.05, carina + 0.055))
    soft = 1.65 * (1.0 + 0.25 * (hb - 0.41))
    return Geometry(
        view=a.view,
        hw=hw,
        hb=hb,
        apex=apex,
        full=full,
        dome=(dome_r, dome_l),
        dome_u=0.42 * hw,
        cp=cp,
        heart=heart,
        med=med,
        knob=knob,
        carina=carina,
        rib0=rib0,
        rib_sp=rib_sp,
        hila=hila,
        soft=soft,
        ctr=ctr,
    )


@dataclass(slots=True)
class Body:
    """Density layers of one study and the per-pixel fields findings reuse.

    ``soft`` tissue, ``bone`` and ``extra`` (devices, nodules...) add attenuation; ``air`` (lung air
    path, 0..1) removes it; ``markings`` are the vessels already restricted to the lungs.
    """

    frame: Frame
    geo: Geometry
    soft: np.ndarray
    bone: np.ndarray
    air: np.ndarray
    markings: np.ndarray
    lung: np.ndarray  # soft lung field 0..1 (without heart)
    right: np.ndarray  # bool: patient's right half (u < 0)
    au: np.ndarray  # |u|
    hwt: np.ndarray  # thorax half-width at each pixel's v
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def lung_mask(self, side: int) -> np.ndarray:
        """Hard mask of one lung (bool)."""
        return self.masks[f"{SIDES[side]}_lung"]

    def attenuation(self) -> np.ndarray:
        """The total attenuation map ``D`` (bright where large)."""
        return self.soft + self.bone + self.markings - self.air * F32(AIR_GAIN)


def draw_body(geo: Geometry, frame: Frame, rng: np.random.Generator) -> Body:
    """Draw the normal chest: body, lungs, heart, mediastinum, diaphragm, bones and vessels."""
    u, v = frame.u, frame.v
    edge = max(0.003, 1.2 * frame.pixel)
    au = np.abs(u)
    right = u < 0

    # Body outline: a neck flaring into the shoulders, then an elliptic cross-section (thinner at the sides).
    r = u / geo.body_half(v)
    body = np.sqrt(np.clip(F32(1.0) - r * r, 0.0, 1.0))
    soft = body * F32(geo.soft)

    # Thorax, diaphragm and lungs.
    hwt = geo.thorax_halfwidth(v)
    dome_v = np.where(right, F32(geo.dome[0]), F32(geo.dome[1]))
    kd = (geo.cp[0] - geo.dome[0]) / (geo.hw - geo.dome_u) ** 2
    dd = au - F32(geo.dome_u)
    diaphragm = dd * dd * F32(kd) + dome_v
    lateral = hwt - au
    below = v - diaphragm
    widen = np.clip((v - F32(geo.apex + 0.1)) * F32(1 / 0.15), 0.0, 1.0) * F32(0.012)
    medial = au - np.where(right, F32(geo.med[0]), F32(geo.med[1])) - widen
    top = v - geo.thorax_top(au)
    lung = np.minimum(np.minimum(np.minimum(lateral, -below), medial), top)
    lung = ramp(lung, edge)
    soft += ramp(below, edge) * body * F32(0.28)  # abdomen: liver / spleen under the domes

    masks: dict[str, np.ndarray] = {}
    cp_v = np.where(right, F32(geo.cp[0]), F32(geo.cp[1]))
    masks["thorax"] = (lateral > 0) & (v < cp_v) & (v > F32(geo.apex))

    exclusion = np.zeros_like(lung)
    heart_mask = np.zeros(lung.shape, dtype=bool)
    _draw_heart(geo, frame, exclusion, soft, heart_mask, edge)
    _draw_knob(geo, frame, exclusion, soft, edge)
    lung *= F32(1.0) - exclusion
    in_lung = lung > 0.5
    masks["right_lung"] = in_lung & right
    masks["left_lung"] = in_lung & ~right
    masks["heart"] = heart_mask

    # Lung air: thickest centrally, thin at the lateral wall and the apex.
    thick = np.minimum(lateral * F32(1 / 0.09), (v - F32(geo.apex)) * F32(1 / 0.12))
    thick = np.minimum(thick, (F32(geo.dome[0] + 0.08) - v) * F32(1 / 0.25))  # soft tissue over the bases
    air = lung * (np.clip(thick, 0.0, 1.0) * F32(0.45) + F32(0.55))

    bone = np.zeros_like(soft)
    _draw_ribs(geo, frame, bone, hwt, au)
    _draw_clavicles(geo, frame, bone, edge)
    _draw_scapulae(geo, frame, bone, edge)
    _draw_spine(geo, frame, bone, soft, edge)
    _draw_airways(geo, frame, soft, edge)
    _draw_gastric_bubble(geo, frame, soft, rng, edge)
    # Markings: vessels plus a faint reticular parenchymal texture (what a pneumothorax lacks).
    markings = (draw_vessels(geo, frame, rng) + _parenchyma(frame.size, rng)) * lung
    return Body(frame, geo, soft, bone, air, markings, lung, right, au, hwt, masks)


def _draw_heart(
    geo: Geometry, frame: Frame, exclusion: np.ndarray, soft: np.ndarray, mask: np.ndarray, edge: float
) -> None:
    """Heart: an ellipse whose widest row sets the CTR; its bottom merges with the diaphragm."""
    cu, cv, a, b = geo.heart
    win = frame.window(cu - a, cv - b - a * HEART_TILT, cu + a, cv + b + a * HEART_TILT)
    if win is None:
        return
    u, v = frame.box(win)
    r2 = ellipse_r2(u, v - (u - F32(cu)) * F32(HEART_TILT), cu, cv, a, b)  # sheared: apex down-left
    inside = ramp((F32(1.0) - r2) * F32(0.5 * min(a, b)), edge)
    exclusion[win] = np.maximum(exclusion[win], inside)
    soft[win] += dome(r2) * F32(0.12)
    mask[win] = (r2 < 1.0) & (v < F32(max(geo.dome) + 0.02))


def _draw_knob(geo: Geometry, frame: Frame, exclusion: np.ndarray, soft: np.ndarray, edge: float) -> None:
    """Aortic knob and the main pulmonary artery: bulges of the left mediastinal border."""
    ku, kv, kr = geo.knob
    for cu, cv, ru, rv in ((ku, kv, kr, kr), (geo.med[1], geo.carina + 0.065, 0.02, 0.035)):
        win = frame.window(cu - ru - 0.01, cv - rv - 0.01, cu + ru + 0.01, cv + rv + 0.01)
        if win is None:
            continue
        u, v = frame.box(win)
        r2 = ellipse_r2(u, v, cu, cv, ru, rv)
        exclusion[win] = np.maximum(exclusion[win], ramp((F32(1.0) - r2) * F32(0.5 * ru), edge))
        soft[win] += dome(r2) * F32(0.03)


def rib_field(
    geo: Geometry, au: np.ndarray, v: np.ndarray, hwt: np.ndarray, edge: float, anterior: bool = True
) -> np.ndarray:
    """Posterior (+ anterior) rib density at the given pixels (works on full images or windows)."""
    sp = geo.rib_sp
    # Posterior ribs: arcs rising a little from the spine, then curving down to the lateral wall.
    ph = rib_phase(geo, au, v)
    frac = ph - np.floor(ph)
    w = RIB_WIDTH
    core = np.minimum(frac, F32(w) - frac) * F32(sp)
    post = ramp(core, edge * 1.5) * F32(0.27) - ramp(core - F32(0.14 * w * sp), edge * 2) * F32(0.11)
    post *= ramp(au - F32(0.035), edge) * ramp(hwt + F32(0.018) - au, edge * 2)
    post *= ramp(v - geo.thorax_top(au) + F32(0.035), 0.01)
    post *= ramp(F32(geo.cp[1] + 0.04) - v, 0.04)
    if not anterior:
        return post
    # Anterior ribs: fainter bands sloping down towards the sternum, ending at the costal cartilage.
    gl = float(_rib_drop(np.array(geo.hw, dtype=F32)))
    pa = (v - F32(geo.rib0 + gl + 0.55 * geo.hw) + au * F32(0.55)) * F32(1.0 / (sp * 1.05))
    fa = pa - np.floor(pa)
    wa = 0.5
    ant = ramp(np.minimum(fa, F32(wa) - fa) * F32(sp), edge * 2) * F32(0.09)
    ant *= ramp(au - F32(0.1), 0.03) * ramp(hwt - au, edge * 2) * ramp(F32(geo.dome[0]) - v, 0.04)
    return post + ant


def rib_phase(geo: Geometry, au: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Posterior rib coordinate: rib ``n`` (1-based) occupies ``n - 1 <= phase < n - 1 + RIB_WIDTH``."""
    return (v - _rib_drop(au) - F32(geo.rib0)) * F32(1.0 / geo.rib_sp)


def rib_centre(geo: Geometry, rib: int, au: np.ndarray | float) -> np.ndarray:
    """v of the centre line of posterior rib ``rib`` (1-based) at ``|u| = au``."""
    return _rib_drop(np.asarray(au, dtype=F32)) + F32(geo.rib0 + (rib - 1 + RIB_WIDTH / 2) * geo.rib_sp)


def _rib_drop(au: np.ndarray) -> np.ndarray:
    """How far a posterior rib has descended at ``|u| = au``: flat arc, then a steep lateral turn."""
    d = au - F32(RIB_PEAK)
    lat = np.clip(au - F32(0.2), 0.0, None)
    return d * d * F32(RIB_BEND) + lat * lat * lat * F32(12.0)


def _draw_ribs(geo: Geometry, frame: Frame, bone: np.ndarray, hwt: np.ndarray, au: np.ndarray) -> None:
    """Both rib cages, evaluated only inside the chest's bounding window."""
    edge = max(0.0025, frame.pixel)
    win = frame.window(-geo.hw - 0.03, geo.rib0 - 0.01, geo.hw + 0.03, max(geo.cp) + 0.12)
    if win is None:
        return
    bone[win] += rib_field(geo, au[win], frame.v[win], hwt[win], edge)


def _draw_clavicles(geo: Geometry, frame: Frame, bone: np.ndarray, edge: float) -> None:
    """Clavicles: S-curved bands from the sternal notch out to the shoulders."""
    top = geo.apex + (0.06 if geo.view == "AP" else 0.085)
    win = frame.window(-geo.hw - 0.08, top - 0.09, geo.hw + 0.08, top + 0.05)
    if win is None:
        return
    u, v = frame.box(win)
    au = np.abs(u)
    rise = 0.02 if geo.view == "AP" else 0.05
    centre = F32(top) - au * F32(rise / 0.33) + np.sin(au * F32(12.0)) * F32(0.01)
    half = F32(0.02) - au * F32(0.02)
    core = half - np.abs(v - centre)
    band = ramp(core, edge) * F32(0.36) - ramp(core - half * F32(0.4), edge) * F32(0.1)
    band *= ramp(au - F32(0.03), edge) * ramp(geo.body_half(v) - F32(0.015) - au, 0.01)
    bone[win] += band


def _draw_scapulae(geo: Geometry, frame: Frame, bone: np.ndarray, edge: float) -> None:
    """Scapulae: outside the lungs on a PA film, over the lateral upper lungs on an AP film."""
    medial = geo.hw - (0.1 if geo.view == "AP" else 0.0)
    win = frame.window(-geo.hw - 0.1, 0.12, geo.hw + 0.1, 0.5)
    if win is None:
        return
    u, v = frame.box(win)
    au = np.abs(u)
    # A triangle: lateral border, medial border and top, as half-planes.
    med_border = au - (F32(medial) + (v - F32(0.16)) * F32(0.12))
    top = v - F32(0.15) + (au - F32(medial)) * F32(0.3)
    low = F32(0.44) - v - (au - F32(medial)) * F32(2.5)
    inside = np.minimum(np.minimum(np.minimum(med_border, top), low), geo.body_half(v) - F32(0.01) - au)
    bone[win] += ramp(inside, 0.012) * F32(0.06)


def _draw_spine(geo: Geometry, frame: Frame, bone: np.ndarray, soft: np.ndarray, edge: float) -> None:
    """Thoracic spine: vertebral bodies with disc spaces, pedicles, spinous processes."""
    win = frame.window(-0.06, 0.0, 0.06, 1.0)
    if win is None:
        return
    u, v = frame.box(win)
    au = np.abs(u)
    half = F32(0.022) + v * F32(0.016)
    body = ramp(half - au, edge)
    period = geo.rib_sp * 0.98
    ph = (v - F32(geo.rib0 + 0.3 * geo.rib_sp)) * F32(1.0 / period)
    frac = ph - np.floor(ph)
    disc = ramp(np.minimum(frac, F32(1.0) - frac) * F32(period) - F32(0.004), edge)
    # Pedicles: small cortical rings near each body's lateral edge, in its upper half.
    pu = (au - half + F32(0.008)) * F32(1 / 0.006)
    pv = (frac - F32(0.35)) * F32(period / 0.009)
    ring = np.abs(pu * pu + pv * pv - F32(1.0))
    spinous = ramp(F32(0.004) - au, edge) * ramp(F32(0.2) - np.abs(frac - F32(0.75)), 0.05)
    bone[win] += (
        body * (disc * F32(0.1) + F32(0.04)) + ramp(F32(0.45) - ring, 0.2) * F32(0.07) + spinous * F32(0.05)
    )
    soft[win] += body * F32(0.05)


def _draw_airways(geo: Geometry, frame: Frame, soft: np.ndarray, edge: float) -> None:
    """Trachea and main bronchi: dark air columns in the mediastinum."""
    c = geo.carina
    tubes = (
        ((0.004, 0.0), (0.0, c), 0.017),
        ((0.0, c), (-0.05, c + 0.045), 0.011),
        ((0.0, c), (0.06, c + 0.06), 0.010),
    )
    win = frame.window(-0.08, 0.0, 0.08, c + 0.08)
    if win is None:
        return
    u, v = frame.box(win)
    # One field for all three tubes (their union), so overlaps at the carina are not darker.
    inside = np.maximum.reduce([ramp(F32(r) - segment_distance(u, v, a, b), edge) for a, b, r in tubes])
    soft[win] -= inside * F32(0.32) * (F32(1.0) - (v > F32(c)) * F32(0.4))


def _draw_gastric_bubble(
    geo: Geometry, frame: Frame, soft: np.ndarray, rng: np.random.Generator, edge: float
) -> None:
    """Air in the stomach under the left hemidiaphragm, with a flat air-fluid level."""
    cu = geo.dome_u + rng.uniform(-0.02, 0.03)
    cv = geo.dome[1] + 0.045
    ru, rv = rng.uniform(0.03, 0.05), rng.uniform(0.015, 0.025)
    win = frame.window(cu - ru, cv - rv, cu + ru, cv + rv)
    if win is None:
        return
    u, v = frame.box(win)
    inside = ramp((F32(1.0) - ellipse_r2(u, v, cu, cv, ru, rv)) * F32(rv * 0.5), edge)
    inside *= ramp(F32(cv + rv * 0.3) - v, edge)
    soft[win] -= inside * F32(0.45)


def _parenchyma(size: int, rng: np.random.Generator) -> np.ndarray:
    """Fine mottled lung texture with ~6 mm features at every image size (made at <= 128 px, upsampled)."""
    base = size
    while base > 128 and base % 2 == 0:
        base //= 2
    texture = np.maximum(noise_crop(base, True, rng), F32(0.0)) * F32(PARENCHYMA)
    while texture.shape[0] < size:
        texture = upsample2(texture)
    return texture


_TREES = 32  # vessel trees in the bank, per image size


@lru_cache(maxsize=4)
def _vessel_bank(size: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Canonical right-lung vessel trees, sampled for ``size`` px: (du, dv, weight) points from the hilum.

    Growing and sampling a tree costs ~1 ms; studies instead pick a tree from this fixed bank and give it
    their own scale, tilt and side (see :func:`draw_vessels`). Each tree: 4 trunks (upper lobe, lateral,
    lower lateral, lower medial) x 6 generations, thinning and fading towards the periphery.
    """
    rng = np.random.default_rng(1234 + size)
    px = 1.0 / size
    density = (0.55, 0.38, 0.28, 0.22, 0.18, 0.15)  # per pixel of vessel length, by generation
    bank = []
    for _ in range(_TREES):
        angle = np.array([-1.85, -2.5, 2.75, 2.2]) + rng.normal(0.0, 0.12, 4)
        length = np.array([0.07, 0.065, 0.075, 0.08]) * rng.uniform(0.85, 1.15, 4)
        pos = np.zeros((4, 2))
        starts, ends, weights = [], [], []
        for level, weight in enumerate(density):
            direction = np.stack([np.cos(angle), np.sin(angle)], axis=1)
            end = pos + length[:, None] * direction
            if level < 2:  # wide central vessels: three parallel strokes
                normal = direction[:, ::-1] * np.array([-1.0, 1.0]) * (0.8 * px)
                starts += [pos - normal, pos, pos + normal]
                ends += [end - normal, end, end + normal]
                weights.append(np.full(3 * len(pos), weight * 0.5))
            else:
                starts.append(pos)
                ends.append(end)
                weights.append(np.full(len(pos), weight))
            n = len(pos)
            spread = rng.uniform(0.15, 0.38, n)
            angle = np.concatenate([angle - spread, angle + spread * rng.uniform(0.6, 1.2, n)])
            angle += rng.normal(0.0, 0.05, 2 * n)
            length = np.concatenate([length, length]) * rng.uniform(0.68, 0.86, 2 * n)
            pos = np.concatenate([end, end])
        step = 0.8 * px
        du, dv, seg = sample_segments(np.concatenate(starts), np.concatenate(ends), step)
        bank.append((du, dv, np.concatenate(weights)[seg] * 0.8))
    return tuple(bank)


def draw_vessels(geo: Geometry, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels: a tree from the bank per lung, scaled to the chest, tilted, splatted bilinearly.

    Drawn at no more than 256 px and upsampled, so strokes keep their width in patient units at every
    size. Vessels outside the lungs vanish when the caller multiplies by the lung field.
    """
    work = frame if frame.size <= 256 else frame.resized(256)
    bank = _vessel_bank(work.size)
    us, vs, ws = [], [], []
    for side, (hu, hv) in enumerate(geo.hila):
        du, dv, weight = bank[int(rng.integers(0, _TREES))]
        scale = geo.hw / 0.33 * rng.uniform(0.92, 1.08)
        tilt = rng.normal(0.0, 0.08)
        cos, sin = scale * np.cos(tilt), scale * np.sin(tilt)
        mirror = SIGN[side] * -1.0  # the bank holds right-lung trees
        us.append(hu + mirror * (cos * du - sin * dv))
        vs.append(hv + sin * du + cos * dv)
        ws.append(weight * scale)
    layer = splat(work, np.concatenate(us), np.concatenate(vs), np.concatenate(ws))
    if work.size >= 192:  # at fine pixel sizes, give the strokes a little width
        layer = blur3(layer) * F32(1.2)
    else:
        layer *= F32(0.55)
    return layer if work is frame else resize(layer, frame.size)
