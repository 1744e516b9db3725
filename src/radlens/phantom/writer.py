"""Write a RadPhantom dataset in the layout of MIMIC-CXR-JPG v2.0.0 and the MIMIC-CXR report archive.

Layout (``NN`` = first two digits of the subject id)::

    files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg           image (8-bit grayscale JPEG, quality 95)
    files/pNN/pSUBJECT/sSTUDY.txt                    free-text report
    masks/pNN/pSUBJECT/sSTUDY/DICOM_ID/<slug>.png    1-bit masks: one per present finding,
                                                     anatomy_{heart,right_lung,left_lung,thorax}.png
                                                     and anatomy_confounder.png when a marker is placed
    mimic-cxr-2.0.0-metadata.csv.gz                  one row per image
    mimic-cxr-2.0.0-split.csv.gz                     train / validate / test, by subject
    mimic-cxr-2.0.0-chexpert.csv.gz, -negbio.csv.gz  one row per study: the ground-truth labels
    manifest.json, config.yaml, versions.json        what was generated, with which config and versions

Same config → identical bytes, whatever the number of workers: everything random is drawn by
:func:`radlens.phantom.sampling.sample_studies` before any work is shared out; gzip headers carry no
time or file name; PNG and JPEG encoders write no timestamps; rows are sorted by subject and study.
The whole folder is built under a temporary name (:func:`radlens.core.atomic_directory`), so an
interrupted run (an exception, Ctrl-C or SIGTERM) leaves nothing behind; worker processes end with
the run, even when the main process is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import io
import json
import multiprocessing
import os
import signal
import struct
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from radlens import __version__
from radlens.core import atomic_directory, prepare_output_dir, progress, write_run_metadata
from radlens.data.schema import CHEXPERT_LABELS, SPLITS, LabelValue
from radlens.phantom.render import mask_slug, render_study
from radlens.phantom.report import labels_for, procedure_for, write_report
from radlens.phantom.sampling import effective_prevalence, sample_studies
from radlens.phantom.spec import SPATIAL_FINDINGS, PhantomConfig, StudySpec

#: Bumped whenever the same config would give different files.
GENERATOR_VERSION = "1"
PREFIX = "mimic-cxr-2.0.0"
JPEG_QUALITY = 95  # MIMIC-CXR-JPG's own setting
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior"}
_ANATOMY = ("heart", "right_lung", "left_lung", "thorax", "confounder")


@dataclass(frozen=True, slots=True)
class _Written:
    """What a worker reports back about one study (small: pixels never leave the worker)."""

    rows: int
    columns: int
    masks: tuple[str, ...]  # file names written under the study's mask folder


def study_folder(subject_id: int) -> str:
    """``pNN/pSUBJECT``: MIMIC's folder of a subject (NN = the first two digits of the id)."""
    return f"p{str(subject_id)[:2]}/p{subject_id}"


def generate_dataset(config: PhantomConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Generate ``config.studies`` studies into ``out`` and return the manifest (also in manifest.json).

    Raises :class:`radlens.core.InputError` when ``out`` is not empty (without ``overwrite``), is the
    current folder or one above it, cannot be written, or the config names
    unknown findings. Nothing is left in ``out`` if it fails or is stopped (Ctrl-C, SIGTERM).
    """
    out = Path(out)
    prepare_output_dir(out, overwrite)  # fail before any work
    prevalence = effective_prevalence(config)
    specs = sample_studies(config)
    workers = _resolve_workers(config.workers, len(specs))
    with (
        _terminate_as_exit(),
        atomic_directory(out, overwrite) as tmp,
    ):
        with _rendering(specs, config.size, tmp, workers) as results:
            written = list(progress(results, total=len(specs), description="RadPhantom"))
        splits = _assign_splits(specs, config.seed)
        labels = [labels_for(spec) for spec in specs]
        _write_tables(tmp, specs, written, splits, labels, config.seed)
        # The worker count never changes a byte of the data, so it is not recorded either (it is
        # reset to its default): 1 or 16 workers give the very same folder.
        recorded = config.model_copy(update={"workers": PhantomConfig.model_fields["workers"].default})
        manifest = _manifest(recorded, prevalence, specs, written, splits, labels)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        write_run_metadata(tmp, recorded)
    return manifest


# --- checks and clean stops ----------------------------------------------------------------------


class _Terminated(SystemExit):
    """SIGTERM arrived: unwinds like Ctrl-C (temporary folder removed, workers stopped), exit 143."""


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Terminated(128 + signum)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """While generating, SIGTERM (``kill``, ``timeout``, a scheduler) unwinds instead of killing.

    Its default action ends the process on the spot: the temporary folder stays and the worker
    processes, orphaned, wait forever. Only the main thread can set signal handlers; elsewhere
    (a web server's worker thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- rendering and per-study files (run in worker processes) -------------------------------------


def _resolve_workers(requested: int, n_studies: int) -> int:
    """``requested`` processes, 0 meaning every core this process may use; never more than needed.

    Rendering is CPU-bound, so more processes than usable cores only cost forks and memory (one per
    study with ``--workers 100000``): the count is capped at the cores. It never changes the output.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested == 0:
        requested = cores
    return max(1, min(requested, cores, n_studies))


def _chunks(specs: Sequence[StudySpec], workers: int) -> list[Sequence[StudySpec]]:
    """About eight chunks per worker (load balance) of 2..64 studies (amortise process round trips)."""
    size = max(2, min(64, len(specs) // (workers * 8) or 1))
    return [specs[i : i + size] for i in range(0, len(specs), size)]


@contextlib.contextmanager
def _rendering(
    specs: Sequence[StudySpec], size: int, root: Path, workers: int
) -> Iterator[Iterator[_Written]]:
    """Yield an iterator over every study rendered and written, in ``specs`` order, on ``workers`` processes.

    All chunks are submitted on entry, so the worker processes are forked before a progress bar (and
    its refresh thread) starts. On exit, even by an error or Ctrl-C, queued chunks are dropped and
    running ones awaited, so no worker writes into the temporary folder while it is being removed.
    """
    if workers == 1:
        folders = _Folders(root)
        yield (_write_study(spec, size, root, folders) for spec in specs)
        return
    # fork: workers start in milliseconds and inherit the imports; spawn where fork does not exist.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
    )
    try:
        futures = [executor.submit(_write_chunk, chunk, size, root) for chunk in _chunks(specs, workers)]
        yield (written for future in futures for written in future.result())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _init_worker(parent: int) -> None:
    """Workers leave Ctrl-C to the main process, which stops them cleanly (no traceback per worker),
    and end when the main process dies, even by SIGKILL (Linux), instead of waiting forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler, inherited by fork
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the main process died before the line above took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def write_studies(specs: Sequence[StudySpec], size: int, root: Path) -> None:
    """Render ``specs`` and write their images, reports and masks under ``root``, in this process.

    The per-study part of :func:`generate_dataset` alone (no tables, no manifest, not atomic), for
    timing it; a dataset is made by :func:`generate_dataset`.
    """
    _write_chunk(specs, size, root)


def _write_chunk(specs: Sequence[StudySpec], size: int, root: Path) -> list[_Written]:
    folders = _Folders(root)
    return [_write_study(spec, size, root, folders) for spec in specs]


class _Folders:
    """Creates folders with one ``mkdir`` each and remembers them.

    File-system metadata calls are the slow part of writing many small files (on a busy disk, more
    than the encoding); ``Path.mkdir(parents=True)`` spends up to five calls per new study folder.
    """

    def __init__(self, root: Path) -> None:
        self._made = {os.fspath(root)}

    def ensure(self, path: str) -> str:
        """Create ``path`` (and missing parents) unless known to exist; return it."""
        if path not in self._made:
            self.ensure(os.path.dirname(path))
            with contextlib.suppress(FileExistsError):  # another worker made it (same subject)
                os.mkdir(path)
            self._made.add(path)
        return path


def _write_study(spec: StudySpec, size: int, root: Path, folders: _Folders | None = None) -> _Written:
    """Render ``spec`` and write its image, report and masks under ``root``."""
    folders = folders or _Folders(root)
    rendered = render_study(spec, size)
    subject = study_folder(spec.subject_id)
    subject_dir = folders.ensure(os.path.join(root, "files", subject))
    image_dir = folders.ensure(os.path.join(subject_dir, f"s{spec.study_id}"))
    _write(os.path.join(image_dir, f"{spec.dicom_id}.jpg"), _jpeg(rendered.image))
    _write(os.path.join(subject_dir, f"s{spec.study_id}.txt"), write_report(spec).encode("utf-8"))
    masks: dict[str, np.ndarray] = {}
    for name in SPATIAL_FINDINGS:
        if spec.has(name) and name in rendered.finding_masks:
            masks[f"{mask_slug(name)}.png"] = rendered.finding_masks[name]
    for part in _ANATOMY:
        mask = rendered.anatomy_masks.get(part)
        if mask is not None and (part != "confounder" or (spec.confounder and mask.any())):
            masks[f"anatomy_{part}.png"] = mask
    mask_dir = folders.ensure(os.path.join(root, "masks", subject, f"s{spec.study_id}", spec.dicom_id))
    for file_name, mask in masks.items():
        _write(os.path.join(mask_dir, file_name), _png_1bit(mask))
    rows, columns = rendered.image.shape
    return _Written(rows=int(rows), columns=int(columns), masks=tuple(masks))


def _write(path: str, data: bytes) -> None:
    # Plain writes: the whole dataset folder is atomic (atomic_directory), so single files need not be.
    with open(path, "wb") as handle:
        handle.write(data)


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=JPEG_QUALITY
    )
    return buffer.getvalue()


def _png_1bit(mask: np.ndarray) -> bytes:
    """``mask`` as a 1-bit grayscale PNG (PNG spec: IHDR, one IDAT, IEND; filter 0 on every row).

    Hand-written because Pillow's encoder costs ~1 ms per small mask in plugin overhead, five times
    this, and a study writes up to a dozen masks; ``tests/phantom/test_writer.py`` checks that Pillow
    decodes it to the same mask.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    rows = np.packbits(mask, axis=1)  # 8 pixels per byte, most significant bit first, as PNG wants
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(scanlines, 6))
        + _PNG_END
    )


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = _png_chunk(b"IEND", b"")


# --- tables and manifest -----------------------------------------------------------------------


def _assign_splits(specs: Sequence[StudySpec], seed: int) -> dict[int, str]:
    """Subject id -> split: ~90/5/5 by subject, at least one subject per split when there are >= 3."""
    subjects = sorted({spec.subject_id for spec in specs})
    order = np.random.default_rng([seed, 2]).permutation(len(subjects))
    n = len(subjects)
    n_held = max(1, round(0.05 * n)) if n >= 3 else 0
    split_of = {}
    for rank, index in enumerate(order):
        split_of[subjects[index]] = "test" if rank < n_held else "validate" if rank < 2 * n_held else "train"
    return split_of


def _study_times(specs: Sequence[StudySpec], seed: int) -> list[tuple[str, str]]:
    """(StudyDate, StudyTime) per study: shifted years like MIMIC's, each subject's studies in order."""
    rng = np.random.default_rng([seed, 1])
    out: list[tuple[str, str]] = []
    day = np.datetime64("2110-01-01")
    previous_subject = None
    for spec in specs:
        if spec.subject_id != previous_subject:
            day = np.datetime64("2110-01-01") + np.timedelta64(int(rng.integers(0, 365 * 90)), "D")
            previous_subject = spec.subject_id
        else:
            day = day + np.timedelta64(int(rng.integers(1, 400)), "D")
        seconds, millis = int(rng.integers(0, 86_400)), int(rng.integers(0, 1000))
        clock = seconds // 3600 * 10_000 + seconds // 60 % 60 * 100 + seconds % 60
        # MIMIC's StudyTime is a float (HHMMSS.fff) printed without leading or trailing zeros.
        out.append((str(day).replace("-", ""), repr(round(clock + millis / 1000, 3))))
    return out


def _label_cell(value: LabelValue) -> str:
    return "" if value is None else repr(float(value))


def _gzip_csv(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    """A gzipped CSV with a fixed header: no timestamp and no file name in the gzip header."""
    text = ",".join(header) + "\n" + "".join(",".join(row) + "\n" for row in rows)
    path.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def _write_tables(
    root: Path,
    specs: Sequence[StudySpec],
    written: Sequence[_Written],
    splits: dict[int, str],
    labels: Sequence[dict[str, LabelValue]],
    seed: int,
) -> None:
    metadata, split_rows, label_rows = [], [], []
    for spec, result, (date, time), study_labels in zip(
        specs, written, _study_times(specs, seed), labels, strict=True
    ):
        view = spec.anatomy.view
        procedure = procedure_for(spec)
        orientation = "Erect" if view == "PA" or spec.seed % 3 else "Recumbent"
        ids = [spec.dicom_id, str(spec.subject_id), str(spec.study_id)]
        shape = [str(result.rows), str(result.columns)]
        metadata.append(
            [*ids, procedure, view, *shape, date, time, procedure, _VIEW_MEANING[view], orientation]
        )
        split_rows.append([spec.dicom_id, str(spec.study_id), str(spec.subject_id), splits[spec.subject_id]])
        label_rows.append(
            [str(spec.subject_id), str(spec.study_id)]
            + [_label_cell(study_labels[n]) for n in CHEXPERT_LABELS]
        )
    _gzip_csv(root / f"{PREFIX}-metadata.csv.gz", METADATA_COLUMNS, metadata)
    _gzip_csv(root / f"{PREFIX}-split.csv.gz", SPLIT_COLUMNS, split_rows)
    # Both label tables hold the ground truth (the real ones come from two different labelers).
    _gzip_csv(root / f"{PREFIX}-chexpert.csv.gz", LABEL_COLUMNS, label_rows)
    _gzip_csv(root / f"{PREFIX}-negbio.csv.gz", LABEL_COLUMNS, label_rows)


def _manifest(
    config: PhantomConfig,
    prevalence: dict[str, float],
    specs: Sequence[StudySpec],
    written: Sequence[_Written],
    splits: dict[int, str],
    labels: Sequence[dict[str, LabelValue]],
) -> dict[str, Any]:
    """What was generated: versions, seed, the resolved config, and counts to check it against."""
    names = {1.0: "positive", 0.0: "negative", -1.0: "uncertain", None: "blank"}
    label_counts = {
        name: {kind: sum(1 for row in labels if row[name] == value) for value, kind in names.items()}
        for name in CHEXPERT_LABELS
    }
    split_counts = {
        split: {
            "subjects": sum(1 for subject in splits if splits[subject] == split),
            "studies": sum(1 for spec in specs if splits[spec.subject_id] == split),
        }
        for split in SPLITS
    }
    return {
        "generator": "RadPhantom",
        "generator_version": GENERATOR_VERSION,
        "radlens_version": __version__,
        "layout": "MIMIC-CXR-JPG 2.0.0",
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "prevalence": prevalence,
        "counts": {
            "subjects": len(splits),
            "studies": len(specs),
            "images": len(specs),
            "labels": label_counts,
            "splits": split_counts,
            "views": dict(sorted(Counter(spec.anatomy.view for spec in specs).items())),
            "confounder_markers": sum(1 for spec in specs if spec.confounder),
        },
        "files": {
            "images": len(written),
            "reports": len(written),
            "masks": sum(len(result.masks) for result in written),
            "tables": 4,
        },
    }
