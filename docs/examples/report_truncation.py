"""What does cutting reports to a token limit lose? The label sets the kept beginnings still carry.

Training and indexing print how many reports are longer than the model's token limit ("N of M
training reports are longer than 128 tokens and were cut"). This script says whether that matters:
for each limit it tokenises every report as the text towers do (all-MiniLM-L6-v2's WordPiece,
[CLS] and [SEP] included), decodes the kept tokens, labels them with radlens's CheXpert labeler
and compares with the labels of the whole report. A report keeps its label set when the two agree on
every label (positive, negative, uncertain and blank alike). Nothing of the reports is printed.

Usage:

    python docs/examples/report_truncation.py DATA [--format mimic] [--limits 96 128 192 256]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from radlens.core import InputError
from radlens.data import label_reports
from radlens.data.readers import FORMATS, read_dataset
from radlens.models import load_tokenizer

LONGEST = 512  # the text towers' largest token limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="dataset folder, e.g. RadPhantom")
    parser.add_argument("--format", default="mimic", choices=FORMATS, help="dataset layout (default mimic)")
    parser.add_argument("--limits", type=int, nargs="+", default=[96, 128, 192, 256], help="token limits")
    args = parser.parse_args()
    if any(not 2 < limit <= LONGEST for limit in args.limits):
        sys.exit(f"error: --limits must be between 3 and {LONGEST} tokens")
    try:
        records = read_dataset(args.data, args.format).records
    except InputError as error:  # a missing or unreadable dataset: one line, no traceback
        sys.exit(f"error: {error.one_line()}")
    texts = [record.report_text() for record in records]
    texts = [text for text in texts if text.strip()]
    if not texts:
        sys.exit(f"error: no report text in {args.data}")
    tokenizer = load_tokenizer()
    full = label_reports(texts)
    lengths = tokenizer.encode(texts, max_length=LONGEST)["attention_mask"].sum(dim=1).numpy()
    print(
        f"{len(texts)} reports: {np.median(lengths):.0f} tokens median, "
        f"{np.percentile(lengths, 90):.0f} at the 90th percentile, {lengths.max()} at most"
    )
    positives = sum(value == 1 for labels in full for value in labels.values())
    print("limit  reports cut  label set kept  positive labels lost")
    for limit in args.limits:
        encoded = tokenizer.encode(texts, max_length=limit)
        kept = [
            tokenizer.decode(ids[mask.bool()])
            for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
        ]
        cut_labels = label_reports(kept)
        same = np.mean([cut == whole for cut, whole in zip(cut_labels, full, strict=True)])
        lost = sum(
            whole[name] == 1 and cut[name] != 1
            for cut, whole in zip(cut_labels, full, strict=True)
            for name in whole
        )
        print(f"{limit:5d}  {np.mean(lengths > limit):11.1%}  {same:14.3f}  {lost:8d} of {positives}")


if __name__ == "__main__":
    main()
