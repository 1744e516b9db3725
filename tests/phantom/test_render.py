"""RadPhantom renderer: masks are where the spec says, findings look like what they mean, output is
deterministic. Specs are built directly (no sampler) over random anatomies, at small sizes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from radlens.core import InputError
from radlens.phantom._anatomy import RIB_WIDTH, make_geometry, rib_phase
from radlens.phantom._raster import Frame
from radlens.phantom.render import (
    CONFOUNDER_TEXT,
    RenderedStudy,
    cardiothoracic_ratio,
    mask_slug,
    render_study,
)
from radlens.phantom.spec import SPATIAL_FINDINGS, Anatomy, Finding, StudySpec

SIZE = 128


def random_anatomy(rng: np.random.Generator, **overrides: object) -> Anatomy:
    """A plausible patient: the ranges a sampler would draw from."""
    anatomy = Anatomy(
        view=str(rng.choice(["PA", "AP"])),  # type: ignore[arg-type]
        body_width=rng.uniform(0.72, 0.9),
        thorax_width=rng.uniform(0.58, 0.74),
        ctr=rng.uniform(0.35, 0.65),
        rotation_deg=rng.uniform(-4, 4),
        inspiration=rng.uniform(0.2, 1.0),
        exposure=rng.uniform(0.85, 1.15),
        contrast=rng.uniform(0.85, 1.2),
        noise_sigma=rng.uniform(0.01, 0.03),
        shift_x=rng.uniform(-0.03, 0.03),
    )
    return dataclasses.replace(anatomy, **overrides)


def make_spec(
    seed: int, findings: list[Finding] | None = None, anatomy: Anatomy | None = None, **kw: object
) -> StudySpec:
    anatomy = anatomy or random_anatomy(np.random.default_rng(seed + 10_000))
    return StudySpec(1, seed, f"d{seed}", seed, anatomy, findings or [], **kw)  # type: ignore[arg-type]


def midline(study: RenderedStudy) -> float:
    """Image column of the patient's midline: centre of the rib cage's horizontal extent."""
    cols = np.flatnonzero(study.anatomy_masks["thorax"].any(axis=0))
    return (cols[0] + cols[-1]) / 2


def centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())


def mirrored(mask: np.ndarray, mid: float) -> np.ndarray:
    """The mask reflected about the vertical line through ``mid``."""
    rows, cols = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[rows, np.clip(np.round(2 * mid - cols).astype(int), 0, mask.shape[1] - 1)] = True
    return out


def detail(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean |Laplacian| inside the (eroded) mask, at <= 128 px scale: fine texture such as lung markings."""
    k = max(1, image.shape[0] // 128)
    n = image.shape[0] // k * k
    x = image[:n, :n].astype(np.float32).reshape(n // k, k, n // k, k).mean(axis=(1, 3))
    m = mask[:n, :n].reshape(n // k, k, n // k, k).all(axis=(1, 3))
    lap = np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:])
    inner = ndimage.binary_erosion(m, iterations=2)[1:-1, 1:-1]
    assert inner.sum() > 20, "region too small to measure"
    return float(lap[inner].mean())


# ----------------------------------------------------------------------------------------------- masks
ONE_OF_EACH: dict[str, Finding] = {
    "Atelectasis": Finding("Atelectasis", side="left", zone="lower"),
    "Cardiomegaly": Finding("Cardiomegaly"),
    "Consolidation": Finding("Consolidation", side="right", zone="lower"),
    "Edema": Finding("Edema", severity="moderate"),
    "Enlarged Cardiomediastinum": Finding("Enlarged Cardiomediastinum"),
    "Fracture": Finding("Fracture", side="right", rib=6),
    "Lung Lesion": Finding("Lung Lesion", side="left", zone="upper", size_mm=12),
    "Lung Opacity": Finding("Lung Opacity", side="right", zone="middle"),
    "Pleural Effusion": Finding("Pleural Effusion", side="left", severity="small"),
    "Pleural Other": Finding("Pleural Other", side="right"),
    "Pneumonia": Finding("Pneumonia", side="left", zone="middle"),
    "Pneumothorax": Finding("Pneumothorax", side="right", severity="small"),
    "Support Devices": Finding("Support Devices", devices=("et_tube",)),
}


def test_every_spatial_finding_is_covered() -> None:
    assert set(ONE_OF_EACH) == set(SPATIAL_FINDINGS)


@pytest.mark.parametrize("name", sorted(ONE_OF_EACH))
def test_present_finding_has_its_mask_and_nothing_else(name: str) -> None:
    for seed in (1, 2):
        study = render_study(make_spec(seed, [ONE_OF_EACH[name]]), SIZE)
        assert set(study.finding_masks) == {name}
        mask = study.finding_masks[name]
        assert mask.shape == (SIZE, SIZE) and mask.dtype == bool and mask.any()


def test_normal_study_has_no_finding_masks() -> None:
    study = render_study(make_spec(3), SIZE)
    assert study.finding_masks == {}
    assert set(study.anatomy_masks) == {"heart", "right_lung", "left_lung", "thorax"}
    assert all(mask.any() for mask in study.anatomy_masks.values())


def test_uncertain_findings_are_not_drawn() -> None:
    base = make_spec(4)
    hedged = dataclasses.replace(base, findings=[Finding("Pneumonia", certainty="uncertain", side="left")])
    a, b = render_study(base, SIZE), render_study(hedged, SIZE)
    assert b.finding_masks == {}
    assert np.array_equal(a.image, b.image)


def test_lung_opacity_is_the_union_of_opacity_masks() -> None:
    findings = [
        Finding("Consolidation", side="right", zone="lower"),
        Finding("Lung Lesion", side="left", zone="upper", size_mm=20),
        Finding("Pleural Effusion", side="left"),
        Finding("Lung Opacity"),
    ]
    masks = render_study(make_spec(5, findings), SIZE).finding_masks
    union = masks["Consolidation"] | masks["Lung Lesion"]
    assert np.array_equal(masks["Lung Opacity"], union)
    assert not (masks["Lung Opacity"] & ~union).any()


LATERAL = [
    Finding("Pleural Effusion", severity="moderate"),
    Finding("Pneumothorax", severity="moderate"),
    Finding("Consolidation", zone="middle"),
    Finding("Pneumonia", zone="lower"),
    Finding("Atelectasis", zone="lower"),
    Finding("Lung Lesion", zone="middle", size_mm=20),
    Finding("Fracture", rib=5),
    Finding("Pleural Other"),
]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("template", LATERAL, ids=lambda f: f.name)
def test_masks_lie_on_the_patients_side(template: Finding, side: str) -> None:
    """Patient right is image left: (almost) every mask pixel is on that side of the midline."""
    for seed in range(3):
        study = render_study(make_spec(100 + seed, [dataclasses.replace(template, side=side)]), SIZE)
        mask = study.finding_masks[template.name]
        cols = np.nonzero(mask)[1]
        on_side = cols < midline(study) if side == "right" else cols > midline(study)
        assert on_side.mean() >= 0.95, (side, on_side.mean())


def test_bilateral_masks_cover_both_sides() -> None:
    for name in ("Pleural Effusion", "Pneumothorax", "Consolidation"):
        study = render_study(make_spec(7, [Finding(name, side="bilateral", severity="moderate")]), SIZE)
        cols = np.nonzero(study.finding_masks[name])[1]
        mid = midline(study)
        assert (cols < mid).sum() > 3 and (cols > mid).sum() > 3


@pytest.mark.parametrize("zone", ["upper", "lower"])
@pytest.mark.parametrize("name", ["Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis"])
def test_masks_lie_in_the_requested_zone(name: str, zone: str) -> None:
    """The mask's centroid falls in the upper/lower third of the lung's height on that side."""
    for seed in range(4):
        side = ("right", "left")[seed % 2]
        study = render_study(make_spec(200 + seed, [Finding(name, side=side, zone=zone, size_mm=15)]), SIZE)
        rows = np.flatnonzero(study.anatomy_masks[f"{side}_lung"].any(axis=1))
        top, height = rows[0], rows[-1] - rows[0] + 1
        row = centroid(study.finding_masks[name])[0]
        third = (row - top) / height
        assert (third < 1 / 3) if zone == "upper" else (third > 2 / 3), (name, zone, third)


# ------------------------------------------------------------------------------------------- geometry
def test_ctr_from_masks_exceeds_half_exactly_with_cardiomegaly() -> None:
    rng = np.random.default_rng(0)
    for seed in range(40):
        cardiomegaly = seed % 2 == 0
        spec = make_spec(300 + seed, [Finding("Cardiomegaly")] if cardiomegaly else [], random_anatomy(rng))
        ratio = cardiothoracic_ratio(render_study(spec, SIZE).anatomy_masks)
        assert (ratio > 0.5) == cardiomegaly, (seed, spec.anatomy.ctr, ratio)


def test_heart_width_follows_anatomy_ctr() -> None:
    rng = np.random.default_rng(1)
    anatomy = random_anatomy(rng, rotation_deg=0.0, view="PA")
    small = cardiothoracic_ratio(
        render_study(make_spec(9, anatomy=dataclasses.replace(anatomy, ctr=0.38)), 256).anatomy_masks
    )
    large = cardiothoracic_ratio(
        render_study(make_spec(9, anatomy=dataclasses.replace(anatomy, ctr=0.45)), 256).anatomy_masks
    )
    assert small == pytest.approx(0.38, abs=0.02) and large == pytest.approx(0.45, abs=0.02)


def test_rotation_turns_image_and_masks_together() -> None:
    """A rotated patient's lungs tilt: the right lung's lowest row moves with the rotation sign."""
    anatomy = random_anatomy(np.random.default_rng(2), shift_x=0.0)
    low = {}
    for angle in (-5.0, 5.0):
        study = render_study(make_spec(10, anatomy=dataclasses.replace(anatomy, rotation_deg=angle)), SIZE)
        low[angle] = np.flatnonzero(study.anatomy_masks["right_lung"].any(axis=1))[-1]
        lungs = study.anatomy_masks["right_lung"] | study.anatomy_masks["left_lung"]
        assert study.image[lungs].mean() < study.image[study.anatomy_masks["heart"]].mean() - 40
    assert low[-5.0] > low[5.0]


# ----------------------------------------------------------------------------------------- appearance
def test_lungs_are_darker_than_mediastinum_and_spine() -> None:
    rng = np.random.default_rng(3)
    for seed in range(10):
        study = render_study(make_spec(400 + seed, anatomy=random_anatomy(rng)), SIZE)
        masks = study.anatomy_masks
        lungs = masks["right_lung"] | masks["left_lung"]
        rows = np.flatnonzero(masks["thorax"].any(axis=1))
        mid = round(midline(study))
        spine = np.zeros_like(lungs)
        spine[rows[0] : rows[-1], mid - 2 : mid + 3] = True
        mediastinum = masks["thorax"] & ~lungs & ~masks["heart"]
        lung_mean = study.image[lungs].mean()
        assert lung_mean < study.image[spine & ~lungs].mean() - 40
        assert lung_mean < study.image[mediastinum].mean() - 30
        assert lung_mean < study.image[masks["heart"]].mean() - 40


def test_ribs_are_brighter_than_the_lung_between_them() -> None:
    rng = np.random.default_rng(4)
    for seed in range(6):
        spec = make_spec(500 + seed, anatomy=random_anatomy(rng))
        study = render_study(spec, 256)
        # Recompute the rib pattern from the same geometry (geometry is the first use of the seed).
        geo = make_geometry(spec, np.random.default_rng(spec.seed))
        frame = Frame.make(256, spec.anatomy.rotation_deg, spec.anatomy.shift_x)
        phase = rib_phase(geo, np.abs(frame.u), frame.v)
        frac = phase - np.floor(phase)
        lungs = study.anatomy_masks["right_lung"] | study.anatomy_masks["left_lung"]
        rib = lungs & (frac > 0.1 * RIB_WIDTH) & (frac < 0.9 * RIB_WIDTH)
        between = lungs & (frac > RIB_WIDTH + 0.12) & (frac < 0.9)
        assert study.image[rib].mean() > study.image[between].mean() + 5


@pytest.mark.parametrize("side", ["right", "left"])
def test_effusion_is_brighter_than_the_mirrored_region(side: str) -> None:
    rng = np.random.default_rng(5)
    for seed in range(12):
        severity = ("small", "moderate", "large")[seed % 3]
        spec = make_spec(
            600 + seed, [Finding("Pleural Effusion", side=side, severity=severity)], random_anatomy(rng)
        )
        study = render_study(spec, SIZE)
        mask = study.finding_masks["Pleural Effusion"]
        other = mirrored(mask, midline(study))
        assert study.image[mask].mean() > study.image[other].mean() + 3, (seed, severity)


def test_effusion_severity_changes_the_area() -> None:
    anatomy = random_anatomy(np.random.default_rng(6))
    area = {
        severity: render_study(
            make_spec(11, [Finding("Pleural Effusion", side="right", severity=severity)], anatomy), SIZE
        )
        .finding_masks["Pleural Effusion"]
        .sum()
        for severity in ("small", "moderate", "large")
    }
    assert area["small"] * 2 < area["moderate"] and area["moderate"] * 1.5 < area["large"]


def test_pneumothorax_is_dark_and_has_no_markings() -> None:
    """Inside the air space: darker than the mirrored lung, and less fine texture than the same pixels of
    the same patient without the pneumothorax (a counterfactual: identical anatomy, vessels and ribs).
    Quantum noise is an independent additive nuisance that would swamp the comparison, so it is ~off."""
    rng = np.random.default_rng(7)
    for seed in range(12):
        anatomy = random_anatomy(rng, noise_sigma=rng.uniform(0.0, 0.003))
        side, severity = ("right", "left")[seed % 2], ("moderate", "large")[seed % 3 == 0]
        spec = make_spec(700 + seed, [Finding("Pneumothorax", side=side, severity=severity)], anatomy)
        study = render_study(spec, SIZE)
        control = render_study(dataclasses.replace(spec, findings=[]), SIZE)
        mask = study.finding_masks["Pneumothorax"]
        assert study.image[mask].mean() < study.image[mirrored(mask, midline(study))].mean() - 5
        assert detail(study.image, mask) < 0.95 * detail(control.image, mask), (seed, severity)


def test_support_device_masks_are_bright() -> None:
    for kind in ("et_tube", "ng_tube", "central_line", "pacemaker", "chest_tube"):
        study = render_study(make_spec(12, [Finding("Support Devices", devices=(kind,))]), SIZE)
        mask = study.finding_masks["Support Devices"]
        assert mask.any(), kind
        assert study.image[mask].mean() > study.image.mean() + 40, kind


def test_fracture_changes_only_pixels_near_the_rib() -> None:
    anatomy = random_anatomy(np.random.default_rng(8), noise_sigma=0.0)
    normal = render_study(make_spec(13, [], anatomy), 256)
    broken = render_study(make_spec(13, [Finding("Fracture", side="left", rib=6)], anatomy), 256)
    changed = np.abs(normal.image.astype(int) - broken.image.astype(int)) > 2
    near = ndimage.binary_dilation(broken.finding_masks["Fracture"], iterations=12)
    assert changed.any() and not (changed & ~near).any()


# --------------------------------------------------------------------------------- style and confounder
def _lag1(image: np.ndarray, mask: np.ndarray) -> float:
    """Horizontal lag-1 autocorrelation of the high-pass residual: near 0 for white noise."""
    x = image.astype(np.float32)
    resid = x - ndimage.uniform_filter(x, 5)
    a, b = resid[:, :-1][mask[:, :-1]], resid[:, 1:][mask[:, :-1]]
    return float(np.corrcoef(a, b)[0, 1])


def test_clinical_style_differs_measurably_from_clean() -> None:
    for seed in range(3):
        spec = make_spec(800 + seed)
        clean, clinical = (
            render_study(spec, 256),
            render_study(dataclasses.replace(spec, style="clinical"), 256),
        )
        heart = clean.anatomy_masks["heart"]
        assert _lag1(clinical.image, heart) > _lag1(clean.image, heart) + 0.1  # correlated, blurred noise
        assert np.abs(clinical.image.astype(int) - clean.image.astype(int)).mean() > 8
        assert np.array_equal(clean.anatomy_masks["thorax"], clinical.anatomy_masks["thorax"])


def _border(image: np.ndarray, deepest: int) -> np.ndarray:
    """Edge rows and columns (up to ``deepest`` in) holding one value end to end: collimation borders
    (noise makes a whole exposed row of one value practically impossible)."""
    border = np.zeros(image.shape, dtype=bool)
    for depth in range(deepest):
        for line in (depth, -1 - depth):
            border[line] |= bool((image[line] == image[line, 0]).all())
            border[:, line] |= bool((image[:, line] == image[0, line]).all())
    return border


def test_clinical_masks_leave_out_what_the_borders_hide() -> None:
    devices = [Finding("Support Devices", devices=("et_tube", "ng_tube", "central_line"))]
    hidden = 0
    for seed in range(40):
        spec = make_spec(seed, devices, style="clinical")
        clinical, clean = (
            render_study(spec, SIZE),
            render_study(dataclasses.replace(spec, style="clean"), SIZE),
        )
        border = _border(clinical.image, deepest=int(0.04 * SIZE) + 2)
        mask = clinical.finding_masks["Support Devices"]
        assert not (mask & border).any(), seed
        assert not (mask & ~clean.finding_masks["Support Devices"]).any()  # only ever less
        hidden += int((clean.finding_masks["Support Devices"] & border).any())
    assert hidden >= 5  # the lines do run under the borders: the check above had something to find


@pytest.mark.parametrize("kind", ["marker", "text"])
def test_confounder_token_iff_requested(kind: str) -> None:
    shapes = []
    for seed in range(6):
        spec = make_spec(900 + seed, style=("clean", "clinical")[seed % 2])
        plain, marked = (
            render_study(spec, SIZE),
            render_study(dataclasses.replace(spec, confounder=True, confounder_kind=kind), SIZE),
        )
        assert "confounder" not in plain.anatomy_masks
        token = marked.anatomy_masks["confounder"]
        row, col = centroid(token)
        assert min(row, SIZE - row) < 0.2 * SIZE and min(col, SIZE - col) < 0.2 * SIZE  # in a corner
        lungs = marked.anatomy_masks["right_lung"] | marked.anatomy_masks["left_lung"]
        assert not (ndimage.binary_dilation(token, iterations=5) & lungs).any()
        assert marked.image[token].mean() > 200
        rows, cols = np.nonzero(token)
        shapes.append((cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1))
        pieces = ndimage.label(token)[1]  # one ring; letters (thin strokes may split at small sizes)
        assert pieces == 1 if kind == "marker" else pieces >= len(CONFOUNDER_TEXT)
    if kind == "text":  # a line of letters: wider than tall; the ring is as wide as it is tall
        assert min(shapes) > 2.0
    else:
        assert max(abs(shape - 1.0) for shape in shapes) < 0.1


# ------------------------------------------------------------------------------- determinism and sizes
def test_same_spec_gives_identical_bytes_and_seed_matters() -> None:
    findings = [Finding("Pleural Effusion", side="left"), Finding("Support Devices", devices=("pacemaker",))]
    spec = make_spec(14, findings, style="clinical", confounder=True)
    a, b = render_study(spec, SIZE), render_study(spec, SIZE)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.finding_masks.keys() == b.finding_masks.keys()
    assert all(np.array_equal(a.finding_masks[k], b.finding_masks[k]) for k in a.finding_masks)
    assert all(np.array_equal(a.anatomy_masks[k], b.anatomy_masks[k]) for k in a.anatomy_masks)
    other = render_study(dataclasses.replace(spec, seed=15), SIZE)
    assert not np.array_equal(a.image, other.image)


@pytest.mark.parametrize("size", [64, 161, 1024])
def test_sizes_from_64_to_1024(size: int) -> None:
    findings = [
        Finding("Pleural Effusion", side="right", severity="large"),
        Finding("Lung Lesion", side="left", size_mm=5),
    ]
    study = render_study(make_spec(16, findings, confounder=True), size)
    assert study.image.shape == (size, size) and study.image.dtype == np.uint8
    for mask in [*study.finding_masks.values(), *study.anatomy_masks.values()]:
        assert mask.shape == (size, size) and mask.dtype == bool and mask.any()
    # Geometry does not depend on resolution: the effusion covers the same fraction of the image.
    fraction = study.finding_masks["Pleural Effusion"].mean()
    reference = (
        render_study(make_spec(16, findings, confounder=True), 128).finding_masks["Pleural Effusion"].mean()
    )
    assert fraction == pytest.approx(reference, rel=0.15)


@pytest.mark.parametrize("size", [63, 1025, 0, 256.0, True])
def test_bad_size_is_an_input_error(size: object) -> None:
    with pytest.raises(InputError, match="size"):
        render_study(make_spec(17), size)  # type: ignore[arg-type]


def test_mask_slug() -> None:
    assert mask_slug("Pleural Effusion") == "pleural_effusion"
    assert mask_slug("Enlarged Cardiomediastinum") == "enlarged_cardiomediastinum"
    assert mask_slug("right_lung") == "right_lung"
    assert mask_slug("Support  Devices") == "support_devices"


def test_unknown_device_is_an_input_error() -> None:
    spec = make_spec(18, [Finding("Support Devices", devices=("ecmo",))])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="ecmo"):
        render_study(spec, 64)
