"""Reports per second of the rule labeler on one core (target: >= 2,000), as a Markdown table.

The corpus is RadPhantom's MIMIC-layout reports (header, indication, technique, findings, impression;
wrapped lines) plus the hand-labelled sentences of ``tests/data/labeler_sentences.tsv`` as short
impression-only reports. Timing is CPU time of this process (one thread), best of ``--repeats`` runs,
so other work on a shared machine inflates it less than wall time; the load average is printed.

The labeler caches per-sentence results (real report collections repeat sentences a lot, and so do
RadPhantom's templates). Each timed pass starts from an empty cache ("one pass" rows); the
"no sentence cache" row labels every sentence from scratch, the worst case of all-unique text.

    .venv/bin/python benchmarks/labeler.py            # 3,000 phantom reports
    .venv/bin/python benchmarks/labeler.py --quick    # 300
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _machine import cpu_model
from radlens.data import labeler
from radlens.data.labeler import label_report
from radlens.data.reports import parse_report, split_sentences
from radlens.phantom.report import write_report
from radlens.phantom.sampling import sample_studies
from radlens.phantom.spec import PhantomConfig

_SENTENCES = Path(__file__).resolve().parents[1] / "tests" / "data" / "labeler_sentences.tsv"


def _rate(function: Callable[[str], object], texts: list[str], repeats: int) -> float:
    """Texts per CPU second, best of ``repeats``, each pass from an empty sentence cache."""
    best = float("inf")
    for _ in range(repeats):
        labeler._sentence_mentions.cache_clear()
        start = time.process_time()
        for text in texts:
            function(text)
        best = min(best, time.process_time() - start)
    return len(texts) / best


def _without_cache(text: str) -> object:
    """``label_report`` with the per-sentence cache bypassed."""
    cached = labeler._sentence_mentions
    labeler._sentence_mentions = cached.__wrapped__  # type: ignore[assignment]
    try:
        return label_report(text)
    finally:
        labeler._sentence_mentions = cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=3000, help="phantom reports in the corpus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 reports, one repeat")
    args = parser.parse_args()
    n_reports, repeats = (300, 1) if args.quick else (args.reports, args.repeats)

    phantom = [write_report(spec) for spec in sample_studies(PhantomConfig(studies=n_reports, seed=0))]
    with _SENTENCES.open(encoding="utf-8") as handle:
        sentences = sorted({row["text"] for row in csv.DictReader(handle, delimiter="\t")})
    rows = [
        ("label_report, RadPhantom reports, one pass", phantom, label_report),
        ("label_report, RadPhantom reports, no sentence cache", phantom, _without_cache),
        ("label_report, hand-labelled sentences (all unique)", sentences, label_report),
        ("parse_report only, RadPhantom reports", phantom, parse_report),
        ("split_sentences only, RadPhantom reports", phantom, split_sentences),
    ]
    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, ")
    print(f"load average {os.getloadavg()[0]:.1f} (one thread used; CPU time, best of {repeats})\n")
    print("| what | texts | mean characters | texts / s (one core) |")
    print("|---|---:|---:|---:|")
    for name, texts, function in rows:
        mean_chars = sum(map(len, texts)) / len(texts)
        print(f"| {name} | {len(texts)} | {mean_chars:.0f} | {_rate(function, texts, repeats):,.0f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
