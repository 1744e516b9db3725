"""How fast does read_mimic index a 10,000-study MIMIC-CXR-JPG tree? Target: <= 10 s.

Builds the tree once in a temporary folder (real layout: files/pNN/pSUBJECT/sSTUDY/*.jpg, one report
per study, the four gzipped tables; 1-3 images per study like MIMIC's ~1.65, a tiny placeholder JPEG
per image, MIMIC-style report text), then times ``read_mimic`` (ids, paths, labels, splits, views,
image-existence check, every report read and section-parsed) and prints a Markdown table.

    python benchmarks/data_index.py [--studies 10000] [--repeats 3] [--keep DIR]

The page cache is warm (the files were just written); a cold read from a network disk is slower.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _machine import cpu_model
from radlens.core import set_quiet
from radlens.data import CHEXPERT_LABELS
from radlens.data.readers import read_mimic

PREFIX = "mimic-cxr-2.0.0"
TARGET_S = 10.0
FINDINGS = (
    "PA and lateral views of the chest were provided. The lungs are clear without focal consolidation, "
    "effusion or pneumothorax. The cardiomediastinal silhouette is normal. Bony structures are intact."
)
ABNORMAL = (
    "There is a {size} {side} pleural effusion with adjacent atelectasis. Heart size is {heart}. "
    "No pneumothorax. Median sternotomy wires are intact."
)


def _report(i: int) -> str:
    sides, sizes, hearts = (
        ("right", "left", "bilateral"),
        ("small", "moderate", "large"),
        ("normal", "enlarged"),
    )
    body = FINDINGS if i % 3 else ABNORMAL.format(size=sizes[i % 3], side=sides[i % 2], heart=hearts[i % 2])
    return (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n \n"
        f" INDICATION:  ___ year old with cough, study {i}.\n \n"
        " COMPARISON:  ___\n \n"
        f" FINDINGS:\n \n {body}\n \n"
        " IMPRESSION:\n \n No acute cardiopulmonary process.\n"
    )


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def build_tree(root: Path, studies: int) -> int:
    """Write the tree; return the number of images."""
    jpeg = _jpeg()
    rng = np.random.default_rng(0)
    meta, split, labels = ["dicom_id,subject_id,study_id,ViewPosition,Rows,Columns"], [], []
    split.append("dicom_id,study_id,subject_id,split")
    labels.append("subject_id,study_id," + ",".join(CHEXPERT_LABELS))
    images = 0
    for i in range(studies):
        subject, study = str(10_000_000 + i // 4 * 37), str(50_000_000 + i)
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        (folder / f"s{study}").mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(_report(i), encoding="utf-8")
        n_images = 1 + (i % 3 == 0) + (i % 7 == 0)
        name = ("train", "validate", "test")[0 if i % 20 else (i // 20) % 3]
        for k in range(n_images):
            dicom = f"{i:08x}-{k:04x}-0000-0000-000000000000"
            (folder / f"s{study}" / f"{dicom}.jpg").write_bytes(jpeg)
            meta.append(f"{dicom},{subject},{study},{('PA', 'LATERAL', 'AP')[k]},32,32")
            split.append(f"{dicom},{study},{subject},{name}")
            images += 1
        values = rng.choice(["", "1.0", "0.0", "-1.0"], size=len(CHEXPERT_LABELS), p=[0.6, 0.15, 0.2, 0.05])
        labels.append(f"{subject},{study}," + ",".join(values))
    for name, lines in (("metadata", meta), ("split", split), ("chexpert", labels), ("negbio", labels)):
        (root / f"{PREFIX}-{name}.csv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return images


def _time(repeats: int, **kwargs: object) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``read_mimic(**kwargs)``, and the studies it read."""
    walls, cpus, count = [], [], 0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = read_mimic(**kwargs)  # type: ignore[arg-type]
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        count = len(result.records)
        assert not result.problems, result.problems[:3]
    return statistics.median(walls), statistics.median(cpus), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the tree here and keep it")
    args = parser.parse_args()
    set_quiet(True)
    root = args.keep or Path(tempfile.mkdtemp(prefix="radlens-index-bench-"))
    try:
        start = time.perf_counter()
        reused = (root / f"{PREFIX}-metadata.csv.gz").is_file()
        if not reused:
            build_tree(root, args.studies)
        built = "reused" if reused else f"built in {time.perf_counter() - start:.1f} s"
        rows = [
            ("read_mimic (all studies, reports parsed)", *_time(args.repeats, root=root)),
            (
                "read_mimic(views=['PA'], splits=['train'])",
                *_time(args.repeats, root=root, views=["PA"], splits=["train"]),
            ),
            ("read_mimic(check_images='header')", *_time(1, root=root, check_images="header")),
        ]
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, load {load:.1f}; Python {platform.python_version()}"
    )
    print(f"Tree: {args.studies} studies ({built}); median of {args.repeats} warm-cache runs\n")
    print("| what | studies read | wall s | CPU s (all threads) | studies / s (wall) | target (wall) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, seconds, cpu, count in rows:
        verdict = "pass" if seconds <= TARGET_S else "FAIL"
        target = f"<= {TARGET_S:.0f} s: {verdict}" if "all studies" in name else ""
        print(f"| {name} | {count} | {seconds:.2f} | {cpu:.2f} | {count / seconds:,.0f} | {target} |")


if __name__ == "__main__":
    main()
