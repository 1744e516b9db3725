"""What a perfect image reader could score on label-aware precision@k over a RadPhantom index.

RadPhantom draws every *present* finding and none of the *hedged* ones ("cannot exclude pneumonia" is
label -1 and nothing is drawn). "No Finding" is positive only when nothing is present or hedged. So a
normal-looking image is either a "No Finding" study or a study whose only findings are hedged, and no
image model can tell which. This script scores two oracles that see exactly what was drawn:

- image → text: rank reports by how often their label set goes with the image's drawn findings;
- text → image: a report's label set is known; rank the images whose drawn findings fit it first.

and the image–text-matching (ITM) ceiling of each negative strategy on the pairs that
``radlens eval retrieval --fusion ... --fusion-split all --seed S`` scores: a normal-looking image with a
normal-looking negative report is indistinguishable from a matching pair (whose report is always
normal-looking too), so a perfect reader answers "related" and is wrong on those negatives.

Usage (the pool is the one ``radlens eval retrieval --pool N --seed S`` scores):

    python docs/examples/retrieval_ceiling.py INDEX_DIR --pool 500 --seed 0
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from radlens.data import CHEXPERT_LABELS
from radlens.metrics import label_relevance, precision_at_k
from radlens.retrieval import RetrievalIndex
from radlens.train import STRATEGIES, NegativeSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index")
    parser.add_argument("--pool", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    index = RetrievalIndex.open(args.index)
    rows = np.arange(len(index))
    if args.pool is not None:  # the same seeded pool as radlens eval retrieval
        rows = np.sort(np.random.default_rng(args.seed).choice(rows, size=args.pool, replace=False))
    labels = index.labels[rows]
    positive = labels == 1
    bits = 1 << np.arange(len(CHEXPERT_LABELS))
    label_set = positive @ bits
    drawn = positive.copy()
    drawn[:, CHEXPERT_LABELS.index("No Finding")] = False  # derived from the report, never drawn
    drawn_set = drawn @ bits
    relevance = label_relevance(labels, labels)
    pairs, seen = Counter(zip(drawn_set, label_set, strict=True)), Counter(drawn_set)
    same_drawing = drawn_set[:, None] == drawn_set[None, :]
    # P(report's label set | image's drawing), zero where the report cannot describe that drawing
    image_to_text = np.where(
        same_drawing,
        np.array([[pairs[(d, s)] for s in label_set] for d in drawn_set])
        / np.array([seen[d] for d in drawn_set])[:, None],
        0.0,
    )
    text_to_image = same_drawing.astype(np.float64)
    rng = np.random.default_rng(0)
    perfect = (label_set[:, None] == label_set[None, :]).astype(np.float64)
    for name, scores in (
        ("label sets known", perfect),
        ("image -> text", image_to_text),
        ("text -> image", text_to_image),
    ):
        # Ties are broken at random (the metric breaks them pessimistically); mean of 5 draws.
        value = np.mean(
            [precision_at_k(scores + 1e-6 * rng.random(scores.shape), relevance, args.k) for _ in range(5)]
        )
        print(f"{name:>17}: precision@{args.k} ceiling {value:.3f}  ({len(rows)} studies)")
    itm_ceilings(index, args.seed)


def itm_ceilings(index: RetrievalIndex, seed: int) -> None:
    """ITM accuracy ceilings on every indexed study paired with its report and one negative."""
    label_sets = [row["labels"] for row in index.rows]
    findings = [column for column, name in enumerate(CHEXPERT_LABELS) if name != "No Finding"]
    drawn = (index.labels[:, findings] == 1).any(axis=1)
    for strategy in STRATEGIES:
        sampler = NegativeSampler(label_sets, strategy)
        # the draw validate_fusion makes for study i: generator seeded with (seed, epoch 0, i)
        negatives = [
            sampler.sample(i, np.random.default_rng([seed, 0, i]))[0] for i in range(len(label_sets))
        ]
        both_normal = np.mean([not drawn[i] and not drawn[j] for i, j in enumerate(negatives)])
        print(
            f"{'ITM ' + strategy:>17}: accuracy ceiling {1 - both_normal / 2:.3f}  ({len(label_sets)} studies)"
        )


if __name__ == "__main__":
    main()
