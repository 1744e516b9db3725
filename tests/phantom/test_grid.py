"""Picture grid: size follows the tile count, finding masks are outlined in their colours, problems show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radlens.core import InputError
from radlens.data.schema import ImageRecord, StudyRecord
from radlens.phantom.grid import FINDING_COLOURS, PAD, write_grid
from radlens.phantom.render import mask_slug, render_study
from radlens.phantom.spec import Anatomy, Finding, StudySpec

THUMB = 64


def _record(folder: Path, k: int, findings: list[Finding], size: int = 128) -> StudyRecord:
    """Render a phantom and save it the way a dataset would: image PNG, one mask PNG per finding."""
    study = render_study(StudySpec(1, k, f"d{k}", k, Anatomy(), findings), size)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"s{k}.png"
    Image.fromarray(study.image).save(path)
    masks = {}
    for name, mask in {**study.finding_masks, "heart": study.anatomy_masks["heart"]}.items():
        masks[name] = folder / f"s{k}_{mask_slug(name)}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks[name])
    labels = {finding.name: 1.0 for finding in findings} or {"No Finding": 1.0}
    return StudyRecord(f"s{k}", "p1", [ImageRecord(f"d{k}", path, "PA", masks)], labels=labels)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[StudyRecord]:
    folder = tmp_path_factory.mktemp("grid")
    effusion = [Finding("Pleural Effusion", side="right", severity="large")]
    return [_record(folder, k, effusion if k % 2 == 0 else []) for k in range(9)]


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_grid_size_follows_the_number_of_tiles(records: list[StudyRecord], tmp_path: Path) -> None:
    same = [records[k] for k in (0, 2, 4, 6, 8, 0, 2, 4, 6)]  # identical captions and legend
    sizes = {
        n: _size(write_grid(same[:n], tmp_path / f"g{n}.png", columns=4, thumb=THUMB)) for n in (2, 4, 5, 9)
    }
    assert sizes[2][0] == 2 * (THUMB + PAD) + PAD
    assert sizes[4][0] == sizes[5][0] == sizes[9][0] == 4 * (THUMB + PAD) + PAD
    row = sizes[5][1] - sizes[4][1]
    assert row > THUMB and sizes[9][1] - sizes[5][1] == row and sizes[2][1] == sizes[4][1]


def test_masks_are_outlined_in_their_colour(records: list[StudyRecord], tmp_path: Path) -> None:
    out = write_grid(records[:2], tmp_path / "grid.png", columns=2, thumb=128)
    grid = np.asarray(Image.open(out).convert("RGB"))
    colour = np.array(FINDING_COLOURS["Pleural Effusion"])
    tiles = [grid[PAD : PAD + 128, x : x + 128] for x in (PAD, 2 * PAD + 128)]
    outlined = (tiles[0] == colour).all(axis=-1)
    assert outlined.sum() > 20 and not (tiles[1] == colour).all(axis=-1).any()
    # The outline is the boundary of the saved mask: inside or on it, never far outside.
    with Image.open(records[0].images[0].masks["Pleural Effusion"]) as mask_image:
        mask = np.asarray(mask_image) > 0  # saved at 128, shown at 128
    assert mask[outlined].mean() > 0.95
    assert not (tiles[0] == np.array(FINDING_COLOURS["Cardiomegaly"])).all(axis=-1).any()
    # Anatomy masks (here "heart") are not findings and get no outline or legend entry.
    assert all(name in FINDING_COLOURS or name == "heart" for name in records[0].images[0].masks)


def test_positive_labels_are_written_in_colour(records: list[StudyRecord], tmp_path: Path) -> None:
    out = write_grid(records[:2], tmp_path / "grid.png", columns=2, thumb=128)
    grid = np.asarray(Image.open(out).convert("RGB"))
    caption = grid[PAD + 128 : PAD + 128 + 60]
    colour = np.array(FINDING_COLOURS["Pleural Effusion"])
    left, right = caption[:, PAD : PAD + 128], caption[:, 2 * PAD + 128 : 2 * PAD + 256]
    assert (left == colour).all(axis=-1).sum() > 5  # "Pleural Effusion" under the first tile
    assert not (right == colour).all(axis=-1).any()


def test_unreadable_files_are_shown_not_dropped(records: list[StudyRecord], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad_image = StudyRecord("bad", "p2", [ImageRecord("x", broken, "PA")], labels={"Edema": 1.0})
    bad_mask = StudyRecord(
        "badmask",
        "p2",
        [ImageRecord("y", records[0].images[0].path, "PA", {"Edema": tmp_path / "missing.png"})],
    )
    no_image = StudyRecord("empty", "p3", [])
    out = write_grid(
        [records[0], bad_image, bad_mask, no_image], tmp_path / "grid.png", columns=4, thumb=THUMB
    )
    assert _size(out)[0] == 4 * (THUMB + PAD) + PAD
    grid = np.asarray(Image.open(out).convert("L"))
    blank = grid[PAD : PAD + THUMB, 2 * PAD + THUMB : 2 * PAD + 2 * THUMB]
    assert blank.max() <= 30  # unreadable image: an empty tile, still present


def test_overwrites_atomically_and_rejects_bad_input(records: list[StudyRecord], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "grid.png"
    write_grid(records[:1], out, thumb=THUMB)
    first = out.read_bytes()
    write_grid(records[:3], out, thumb=THUMB)
    assert out.read_bytes() != first
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary files left
    with pytest.raises(InputError, match="no studies"):
        write_grid([], tmp_path / "empty.png")
    with pytest.raises(InputError, match="columns"):
        write_grid(records[:1], tmp_path / "c.png", columns=0)
    assert not (tmp_path / "empty.png").exists() and not (tmp_path / "c.png").exists()


def test_reader_style_mask_keys(records: list[StudyRecord], tmp_path: Path) -> None:
    """Keys as readers give them: a slug ("pleural_effusion") is outlined, "anatomy:heart" is not."""
    image = records[0].images[0]
    keyed = {"pleural_effusion": image.masks["Pleural Effusion"], "anatomy:heart": image.masks["heart"]}
    record = StudyRecord("k", "p1", [ImageRecord("k", image.path, "PA", keyed)], labels=records[0].labels)
    grid = np.asarray(Image.open(write_grid([record], tmp_path / "g.png", thumb=128)).convert("RGB"))
    tile = grid[PAD : PAD + 128, PAD : PAD + 128]
    assert (tile == np.array(FINDING_COLOURS["Pleural Effusion"])).all(axis=-1).sum() > 20
