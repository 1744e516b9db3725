"""Which findings do a retrieval model's image embeddings carry? A linear probe per CheXpert finding.

An image–report model can only match a report's finding to an image whose embedding encodes it. This
script fits one logistic regression per finding on the image embeddings of one index (``FIT_INDEX``)
and scores it by ROC AUC on another index built with the same model (``SCORE_INDEX``, other patients).
AUC near 0.5 means the embedding does not see the finding, whatever the training objective.
A finding counts as present when its label is 1 (uncertain and blank count as absent); "any finding"
is present when any finding but "No Finding" is. The embeddings are standardised on the fit set, and
findings with fewer than 5 present or absent studies in either set are skipped (listed as such).

Usage (two indexes of the same model, e.g. two RadPhantom sets of different seeds):

    python docs/examples/image_probe.py FIT_INDEX SCORE_INDEX [--c 0.1]
"""

from __future__ import annotations

import argparse
import sys

from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from radlens.core import InputError
from radlens.data import CHEXPERT_LABELS
from radlens.retrieval import RetrievalIndex

MIN_STUDIES = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fit_index", help="index whose image embeddings the probes are fitted on")
    parser.add_argument("score_index", help="index of the same model the probes are scored on")
    parser.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of each probe")
    args = parser.parse_args()
    try:
        fit, score = RetrievalIndex.open(args.fit_index), RetrievalIndex.open(args.score_index)
    except InputError as error:  # a missing or damaged index: one line, no traceback
        sys.exit(f"error: {error.one_line()}")
    if fit.fingerprint != score.fingerprint:
        sys.exit(
            "error: the two indexes were built with different models; build both with the same checkpoint"
        )
    fit_x, score_x = fit.images.vectors(), score.images.vectors()
    mean, std = fit_x.mean(axis=0), fit_x.std(axis=0) + 1e-6
    fit_x, score_x = (fit_x - mean) / std, (score_x - mean) / std
    findings = [name for name in CHEXPERT_LABELS if name != "No Finding"]
    columns = [CHEXPERT_LABELS.index(name) for name in findings]
    present, present_scored = fit.labels[:, columns] == 1, score.labels[:, columns] == 1
    targets = {"any finding": (present.any(axis=1), present_scored.any(axis=1))}
    for j, name in enumerate(findings):
        targets[name] = (present[:, j], present_scored[:, j])
    print(f"linear probes on {len(fit)} studies, scored on {len(score)} other studies")
    print(f"{'finding':28s} {'present (scored)':>16s} {'AUC':>6s}")
    for name, (y, y_score) in targets.items():
        counts = (int(y.sum()), int((~y).sum()), int(y_score.sum()), int((~y_score).sum()))
        if min(counts) < MIN_STUDIES:
            print(f"{name:28s} {counts[2]:16d}   skipped: fewer than {MIN_STUDIES} present or absent")
            continue
        probe = LogisticRegression(C=args.c, max_iter=3000).fit(fit_x, y)
        auc = roc_auc_score(y_score, probe.decision_function(score_x))
        print(f"{name:28s} {counts[2]:16d} {auc:6.3f}")


if __name__ == "__main__":
    main()
