"""The rule labeler against hand-labelled sentences, its scope and aggregation rules, and its helpers."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radlens.data import labeler
from radlens.data.labeler import (
    identical_label_sets,
    label_report,
    label_reports,
    no_positive_in_common,
    share_positive,
)
from radlens.data.schema import CHEXPERT_LABELS

SENTENCES = Path(__file__).with_name("labeler_sentences.tsv")
_VALUES = {"1": 1.0, "0": 0.0, "-1": -1.0, "": None}


def _rows() -> list[dict[str, str]]:
    with SENTENCES.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_hand_labelled_file_covers_every_observation() -> None:
    rows = _rows()
    assert len({row["text"] for row in rows}) >= 150
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        assert row["observation"] in CHEXPERT_LABELS, row
        assert row["expected"] in _VALUES, row
        seen[row["observation"]].add(row["expected"])
    for name in CHEXPERT_LABELS:
        # "No Finding" is 1 or blank by the CheXpert rule; every other observation is 1, 0 and -1
        wanted = {"1", ""} if name == "No Finding" else {"1", "0", "-1"}
        assert wanted <= seen[name], f"{name}: only {sorted(seen[name])}"


def test_hand_labelled_sentences_per_class_accuracy() -> None:
    rows = _rows()
    cache: dict[str, dict[str, float | None]] = {}
    right: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    wrong: list[str] = []
    for row in rows:
        labels = cache.setdefault(row["text"], label_report(row["text"]))
        name, want = row["observation"], _VALUES[row["expected"]]
        total[name] += 1
        if labels[name] == want:
            right[name] += 1
        else:
            wrong.append(f"  {name}: want {want}, got {labels[name]}: {row['text']}")
    accuracy = {name: right[name] / total[name] for name in total}
    table = "\n".join(
        f"  {name:<28} {accuracy[name]:.3f} ({right[name]}/{total[name]})" for name in sorted(total)
    )
    message = f"per-class accuracy:\n{table}\nmismatches:\n" + "\n".join(wrong)
    assert min(accuracy.values()) >= 0.95, message
    assert sum(right.values()) / sum(total.values()) >= 0.98, message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No effusion. Large right pneumothorax.", {"Pleural Effusion": 0.0, "Pneumothorax": 1.0}),
        (
            "No pneumothorax, but there is a small left effusion",
            {"Pneumothorax": 0.0, "Pleural Effusion": 1.0},
        ),
        ("Small left effusion without pneumothorax.", {"Pleural Effusion": 1.0, "Pneumothorax": 0.0}),
        ("No effusion, possible small pneumothorax.", {"Pleural Effusion": 0.0, "Pneumothorax": -1.0}),
        ("Possible effusion, no pneumothorax.", {"Pleural Effusion": -1.0, "Pneumothorax": 0.0}),
        (
            "There is an effusion and the pneumothorax has resolved.",
            {"Pleural Effusion": 1.0, "Pneumothorax": 0.0},
        ),
        ("Effusion and pneumothorax have resolved.", {"Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
        ("No edema, the heart is enlarged.", {"Edema": 0.0, "Cardiomegaly": 1.0}),
        ("NO PNEUMOTHORAX.", {"Pneumothorax": 0.0}),
        ("No interval change in the moderate left effusion.", {"Pleural Effusion": 1.0}),
        ("Opacity may reflect atelectasis.", {"Lung Opacity": 1.0, "Atelectasis": -1.0}),
        ("Rule out pneumonia.", {"Pneumonia": -1.0}),
    ],
)
def test_cue_scope(text: str, expected: dict[str, float]) -> None:
    labels = label_report(text)
    assert {name: labels[name] for name in expected} == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # after the mention: a copula or a clause end before/after the hedge
        ("Pneumonia is unlikely.", {"Pneumonia": 0.0, "No Finding": 1.0}),
        ("Pneumonia is considered unlikely.", {"Pneumonia": 0.0}),
        ("Pneumonia is not likely.", {"Pneumonia": 0.0}),
        ("Pneumothorax is not suspected.", {"Pneumothorax": 0.0}),
        ("Effusion is doubtful.", {"Pleural Effusion": 0.0}),
        ("Pneumonia unlikely.", {"Pneumonia": 0.0}),
        ("Pneumonia is unlikely to be present.", {"Pneumonia": 0.0}),
        ("Pneumonia is felt to be unlikely given the clinical history.", {"Pneumonia": 0.0}),
        ("Effusion and pneumothorax are unlikely.", {"Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
        # before the mention: the subject is not negated
        ("Opacity is unlikely to represent pneumonia.", {"Lung Opacity": 1.0, "Pneumonia": 0.0}),
        ("It is unlikely that this represents pneumonia.", {"Pneumonia": 0.0}),
        ("The opacity is not likely pneumonia.", {"Lung Opacity": 1.0, "Pneumonia": 0.0}),
        ("Opacity, pneumonia unlikely.", {"Lung Opacity": 1.0, "Pneumonia": 0.0}),
        ("Small effusion is not likely to be clinically significant.", {"Pleural Effusion": 1.0}),
        # "less likely" stays uncertain (CheXpert's post-negation uncertainty rule)
        ("Pneumonia is less likely.", {"Pneumonia": -1.0}),
    ],
)
def test_hedged_negation(text: str, expected: dict[str, float]) -> None:
    labels = label_report(text)
    assert {name: labels[name] for name in expected} == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pneumothorax: none.", {"Pneumothorax": 0.0, "No Finding": 1.0}),
        ("Pleural effusion: none.", {"Pleural Effusion": 0.0}),
        ("Pneumothorax: no.", {"Pneumothorax": 0.0}),
        ("Effusion: absent.", {"Pleural Effusion": 0.0}),
        ("Pneumothorax: negative.", {"Pneumothorax": 0.0}),
        ("Pleural effusion: not seen.", {"Pleural Effusion": 0.0}),
        ("Heart size: normal.", {"Cardiomegaly": 0.0}),
        ("Pneumothorax: none. Effusion: small left.", {"Pneumothorax": 0.0, "Pleural Effusion": 1.0}),
        ("Effusion: no change.", {"Pleural Effusion": 1.0}),  # not a bare answer: the colon still cuts
        # headings still label what follows them
        ("IMPRESSION: pneumothorax.", {"Pneumothorax": 1.0, "No Finding": None}),
        ("FINDINGS: Small effusion.", {"Pleural Effusion": 1.0}),
        (
            "FINDINGS:\nPneumothorax: none.\nSmall left effusion.",
            {"Pneumothorax": 0.0, "Pleural Effusion": 1.0},
        ),
        ("Notification: pneumothorax.", {"Pneumothorax": 1.0}),
    ],
)
def test_colon_answers_and_headings(text: str, expected: dict[str, float | None]) -> None:
    labels = label_report(text)
    assert {name: labels[name] for name in expected} == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Possible small effusion. Large left effusion.", 1.0),  # positive beats uncertain
        ("Large left effusion. No right effusion.", 1.0),  # positive beats negative
        ("No right effusion. Left effusion cannot be excluded.", -1.0),  # uncertain beats negative
        ("No effusion. The effusion has resolved.", 0.0),
        ("The heart is enlarged.", None),  # never mentioned: blank
    ],
)
def test_aggregation_across_mentions(text: str, value: float | None) -> None:
    assert label_report(text)["Pleural Effusion"] == value


def test_no_finding_rule() -> None:
    assert label_report("No acute cardiopulmonary process.")["No Finding"] == 1.0
    assert label_report("The lungs are clear.")["No Finding"] == 1.0
    normal = label_report("Heart size is normal. No pleural effusion or pneumothorax.")
    assert normal["No Finding"] == 1.0 and normal["Cardiomegaly"] == 0.0 and normal["Pneumothorax"] == 0.0
    devices = label_report("Endotracheal tube 4 cm above the carina. No acute process.")
    assert devices["No Finding"] == 1.0 and devices["Support Devices"] == 1.0  # devices do not count
    assert label_report("Possible pneumonia.")["No Finding"] is None  # uncertain blocks it
    assert label_report("Small effusion.")["No Finding"] is None
    assert label_report("Hyperinflated lungs consistent with COPD.")["No Finding"] is None  # other finding
    assert label_report("No emphysema.")["No Finding"] == 1.0
    assert label_report("") == dict.fromkeys(CHEXPERT_LABELS)
    assert label_report("   \n ") == dict.fromkeys(CHEXPERT_LABELS)


def test_heart_failure_makes_cardiomegaly_uncertain_when_blank() -> None:
    assert label_report("Findings consistent with CHF.")["Cardiomegaly"] == -1.0
    assert label_report("Mild CHF. Heart size is normal.")["Cardiomegaly"] == 0.0
    assert label_report("No evidence of CHF.")["Cardiomegaly"] is None


def test_only_findings_and_impression_are_labelled() -> None:
    report = "INDICATION: Fever, rule out pneumonia.\nFINDINGS: Lungs are clear.\nIMPRESSION: Normal."
    labels = label_report(report)
    assert labels["Pneumonia"] is None and labels["No Finding"] == 1.0
    assert label_report("Rule out pneumonia.")["Pneumonia"] == -1.0  # no headings: the whole text


_VOCABULARY = """
no without possible may cannot exclude be excluded effusion effusions pleural pneumothorax ptx heart size
is normal enlarged not cardiomegaly and or but , . ; ? versus vs likely opacity tube et picc consolidation
pneumonia resolved has the of left right small clear lungs mediastinum widened r/o blunting costophrenic
angle nodule mass fracture edema chf emphysema to suggest concerning for
"""
_WORDS = st.sampled_from(_VOCABULARY.split())
_REFERENCES = [labeler._SCANNER.reference(which) for which in (0, 1)]  # mentions, cues


@settings(max_examples=150, deadline=None)
@given(st.lists(_WORDS, max_size=30))
def test_labels_are_always_well_formed(words: list[str]) -> None:
    labels = label_report(" ".join(words))
    assert list(labels) == list(CHEXPERT_LABELS)
    assert all(value in (1.0, 0.0, -1.0, None) for value in labels.values())
    assert labels["No Finding"] in (1.0, None)
    if labels["No Finding"] == 1.0:
        pathologies = [v for k, v in labels.items() if k not in ("No Finding", "Support Devices")]
        assert all(value in (0.0, None) for value in pathologies)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gets_well_formed_labels(text: str) -> None:
    labels = label_report(text)
    assert list(labels) == list(CHEXPERT_LABELS)
    assert all(value in (1.0, 0.0, -1.0, None) for value in labels.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(_WORDS, max_size=30))
def test_scanner_matches_the_plain_alternations(words: list[str]) -> None:
    text = " ".join(words)
    for found, reference in zip(labeler._SCANNER.scan(text), _REFERENCES, strict=True):
        assert [(start, end) for start, end, _ in found] == [m.span() for m in reference.finditer(text)]


def test_scanner_picks_the_same_pattern_as_the_alternations() -> None:
    texts = [row["text"].lower() for row in _rows()]
    for text in texts:
        for which, found in enumerate(labeler._SCANNER.scan(text)):
            values = labeler._SCANNER.values(which)
            expected = [
                (m.start(), m.end(), values[int((m.lastgroup or "p-1")[1:])])
                for m in _REFERENCES[which].finditer(text)
            ]
            assert found == expected, text


def test_label_reports_is_label_report_in_order() -> None:
    texts = ["No effusion.", "Small effusion.", ""]
    assert label_reports(texts) == [label_report(text) for text in texts]
    assert label_reports(iter(texts)) == label_reports(texts)


def test_label_relations_use_positive_sets() -> None:
    effusion = {"Pleural Effusion": 1.0, "Edema": -1.0, "Atelectasis": 0.0, "Pneumonia": None}
    effusion_only = {"Pleural Effusion": 1.0}
    edema = {"Edema": 1.0}
    uncertain_effusion = {"Pleural Effusion": -1.0}
    assert identical_label_sets(effusion, effusion_only)  # -1, 0 and None are not positive
    assert not identical_label_sets(effusion, edema)
    assert identical_label_sets({}, uncertain_effusion)
    assert share_positive(effusion, effusion_only) and not no_positive_in_common(effusion, effusion_only)
    assert not share_positive(effusion, edema) and no_positive_in_common(effusion, edema)
    assert not share_positive(effusion, uncertain_effusion)  # -1 in one of them: not shared
    assert no_positive_in_common({}, {})
