"""RadPhantom reports: MIMIC layout, and labels exactly consistent with the words.

The consistency tests read the text with a deliberately small sentence-level labeler (keywords per
observation; a sentence is uncertain if it hedges, negative if it negates, else positive) and require
that every observation's mentions all carry its label, and that unlabelled observations are never
mentioned. That is stricter than "a labeler recovers the labels": no stray or contradictory mention.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from radlens.data.reports import parse_report
from radlens.data.schema import CHEXPERT_LABELS
from radlens.phantom.report import labels_for, write_report
from radlens.phantom.sampling import sample_studies
from radlens.phantom.spec import Anatomy, Finding, PhantomConfig, StudySpec

KEYWORDS = {
    "Atelectasis": r"atelecta",
    "Cardiomegaly": r"cardiomegaly|\bheart\b|cardiac silhouette",
    "Consolidation": r"consolidation",
    "Edema": r"edema",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fracture",
    "Lung Lesion": r"\bnodules?\b|\bmass\b",
    "Lung Opacity": r"opacit",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening",
    "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothorax",
    "Support Devices": r"\btubes?\b|\blines?\b|catheter|pacemaker|support devices",
}
HEDGE = re.compile(r"\bpossible\b|cannot (be )?exclude|\bmay\b", re.IGNORECASE)
NEGATION = re.compile(r"^(no|there (is|are) no)\b|\bnot\b|\bnormal\b", re.IGNORECASE)
NORMAL = re.compile(r"No acute (cardiopulmonary|intrathoracic)")
SIDE_WORDS = {
    "right": r"\bright\b",
    "left": r"\bleft\b",
    "bilateral": r"bilateral|\bboth\b|bibasilar|multifocal",
}
CLASS_VALUE = {"positive": 1.0, "uncertain": -1.0, "negative": 0.0}


def sentences(text: str) -> list[str]:
    """Sentences of a block of report text (numbered impression items count as sentences)."""
    flat = " ".join(line.strip() for line in text.splitlines())
    flat = re.sub(r"\b\d+\.\s|\b[A-Z]{4,}:", "", flat)  # list numbers, section headings
    return [s.strip() for s in re.split(r"(?<=\.)\s+", flat) if s.strip()]


def classify(sentence: str) -> str:
    if HEDGE.search(sentence):
        return "uncertain"
    return "negative" if NEGATION.search(sentence) else "positive"


def mentions(text: str) -> dict[str, set[str]]:
    """Observation -> the classes of the sentences that mention it."""
    found: dict[str, set[str]] = {}
    for sentence in sentences(text):
        for name, pattern in KEYWORDS.items():
            if re.search(pattern, sentence, re.IGNORECASE):
                found.setdefault(name, set()).add(classify(sentence))
    return found


@pytest.fixture(scope="module")
def specs() -> list[StudySpec]:
    return sample_studies(PhantomConfig(studies=600, seed=23))


@pytest.fixture(scope="module")
def reports(specs: list[StudySpec]) -> list[str]:
    return [write_report(spec) for spec in specs]


def _body(text: str) -> str:
    """FINDINGS and IMPRESSION only (the header sections must not mention observations either)."""
    return text[text.index(" FINDINGS:") :]


def test_mimic_layout(specs: list[StudySpec], reports: list[str]) -> None:
    for spec, text in zip(specs, reports, strict=True):
        lines = text.split("\n")
        assert lines[0] == " " * 33 + "FINAL REPORT"
        assert lines[1].startswith(" EXAMINATION:  CHEST (")
        assert text.endswith("\n") and lines[-1] == ""
        headings = [h for h in re.findall(r"^ ([A-Z]+):", text, re.MULTILINE)]
        assert headings in (
            ["EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION"],
            ["EXAMINATION", "INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION"],
        )
        assert all(line.startswith(" ") and len(line) <= 79 for line in lines[1:-1])
        assert "___" in text.split("COMPARISON")[0]  # de-identified age in the indication
        assert ("PORTABLE AP" in lines[1]) == (spec.anatomy.view == "AP")
        sections = parse_report(text)  # radlens's own MIMIC section parser finds every section
        assert sections.findings and sections.impression and sections.indication and sections.comparison
    assert any("TECHNIQUE:" in t for t in reports) and any("TECHNIQUE:" not in t for t in reports)
    assert {"COMPARISON:  None.", "COMPARISON:  ___."} <= {
        line.strip() for t in reports for line in t.splitlines()
    }


def test_deterministic(specs: list[StudySpec], reports: list[str]) -> None:
    assert [write_report(spec) for spec in specs[:50]] == reports[:50]
    other = sample_studies(PhantomConfig(studies=600, seed=24))
    assert sum(write_report(a) != write_report(b) for a, b in zip(specs, other, strict=True)) > 590


def test_labels_exactly_match_text(specs: list[StudySpec], reports: list[str]) -> None:
    for spec, text in zip(specs, reports, strict=True):
        labels = labels_for(spec)
        assert list(labels) == list(CHEXPERT_LABELS)
        sections = parse_report(text)
        for section in (_body(text), sections.findings or "", sections.impression or ""):
            found = mentions(section)
            for name in KEYWORDS:
                expected = labels[name]
                classes = found.get(name, set())
                if expected is None:
                    assert not classes, (name, section)
                else:
                    assert {CLASS_VALUE[c] for c in classes} == {expected}, (name, classes, section)
        assert bool(NORMAL.search(text)) == (labels["No Finding"] == 1.0)
        assert labels["No Finding"] in (1.0, None)


def test_labels_follow_spec(specs: list[StudySpec]) -> None:
    for spec in specs:
        labels = labels_for(spec)
        for name in CHEXPERT_LABELS:
            finding = next((f for f in spec.findings if f.name == name), None)
            if finding is not None:
                assert labels[name] == (1.0 if finding.certainty == "present" else -1.0)
            elif name in spec.negated:
                assert labels[name] == 0.0
            else:
                assert labels[name] is None


def _sentences_about(text: str, name: str) -> list[str]:
    return [s for s in sentences(_body(text)) if re.search(KEYWORDS[name], s, re.IGNORECASE)]


def test_sides_sizes_and_places_agree_with_the_image(specs: list[StudySpec], reports: list[str]) -> None:
    checked = Counter()
    for spec, text in zip(specs, reports, strict=True):
        for f in spec.findings:
            if f.name in ("Support Devices", "No Finding", "Edema") or f.side is None:
                continue  # devices are placed per kind; edema is bilateral by nature ("pulmonary edema")
            about = _sentences_about(text, f.name)
            assert about, (f.name, text)
            for sentence in about:
                if f.name == "Lung Opacity" and f.certainty == "present" and "perihilar" in sentence:
                    assert f.side == "bilateral"
                assert re.search(SIDE_WORDS[f.side], sentence, re.IGNORECASE) or (
                    f.name == "Pneumonia" and f.certainty == "uncertain"  # "Cannot exclude early pneumonia."
                ), (f, sentence)
                others = [s for s in ("right", "left") if s != f.side and f.side != "bilateral"]
                assert not any(re.search(SIDE_WORDS[o], sentence) for o in others), (f, sentence)
                checked[f.name] += 1
            if f.certainty != "present":
                continue
            if f.name in ("Pleural Effusion", "Pneumothorax"):
                assert all(f.severity in s.lower() for s in about), (f, about)
            if f.name == "Lung Lesion":
                size = round(f.size_mm or 0)
                words = f"{size / 10:.1f} cm" if size >= 30 else f"{size} mm"
                assert all(words in s for s in about), (f, about)
            if f.name == "Fracture":
                ordinal = ["third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"][
                    (f.rib or 3) - 3
                ]
                assert all(ordinal in s for s in about)
            if f.name in ("Consolidation", "Pneumonia", "Atelectasis") and f.side != "bilateral":
                zone_words = {
                    "upper": r"upper|apex|apical",
                    "middle": r"\bmid|middle",
                    "lower": r"lower|base|basilar",
                }
                assert all(re.search(zone_words[f.zone or "lower"], s) for s in about), (f, about)
    assert min(checked.values()) > 5


def test_cardiomegaly_severity_words(specs: list[StudySpec], reports: list[str]) -> None:
    words = {"small": "mild", "moderate": "moderate", "large": r"severe|marked"}
    for spec, text in zip(specs, reports, strict=True):
        finding = next((f for f in spec.present() if f.name == "Cardiomegaly"), None)
        if finding is not None:
            assert all(
                re.search(words[finding.severity or ""], s, re.I)
                for s in _sentences_about(text, "Cardiomegaly")
            )


def test_paraphrases_and_order_vary(specs: list[StudySpec], reports: list[str]) -> None:
    def shape(sentence: str) -> str:  # a sentence with its particulars blanked out
        return re.sub(r"\b(right|left|bilateral|small|moderate|large|mild|severe)\b", "_", sentence.lower())

    for name in ("Pleural Effusion", "Pneumothorax", "Cardiomegaly", "Edema", "Atelectasis", "Lung Opacity"):
        present = [t for s, t in zip(specs, reports, strict=True) if s.has(name)]
        negated = [t for s, t in zip(specs, reports, strict=True) if name in s.negated]
        assert len({shape(x) for t in present for x in _sentences_about(t, name)}) >= 3, name
        assert len({shape(x) for t in negated for x in _sentences_about(t, name)}) >= 3, name
    first_topics = Counter()
    for text in reports:
        findings = sentences(parse_report(text).findings or "")
        first_topics[next((n for n in KEYWORDS if re.search(KEYWORDS[n], findings[0], re.I)), "other")] += 1
    assert len(first_topics) >= 5  # sentence order is not fixed


def test_uncertain_and_normal_phrasing() -> None:
    anatomy = Anatomy()
    hedged = StudySpec(
        1,
        2,
        "x",
        seed=4,
        anatomy=anatomy,
        findings=[Finding("Pleural Effusion", "uncertain", "left", "lower", "small")],
    )
    text = write_report(hedged)
    effusion = _sentences_about(text, "Pleural Effusion")
    assert effusion and all(HEDGE.search(s) and "left" in s and "small" in s for s in effusion)
    assert labels_for(hedged)["Pleural Effusion"] == -1.0 and labels_for(hedged)["No Finding"] is None
    normal = StudySpec(
        3, 4, "y", seed=9, anatomy=anatomy, findings=[Finding("No Finding")], negated=("Pneumothorax",)
    )
    text = write_report(normal)
    assert NORMAL.search(text) and "pneumothorax" in text.lower()
    assert {k: v for k, v in labels_for(normal).items() if v is not None} == {
        "No Finding": 1.0,
        "Pneumothorax": 0.0,
    }


def _macro_f1(truth: list[str], guess: list[str]) -> float:
    """Macro F1 over the classes present in ``truth`` or ``guess`` (sklearn's definition, without its import)."""
    scores = []
    for cls in set(truth) | set(guess):
        tp = sum(t == g == cls for t, g in zip(truth, guess, strict=True))
        fp = sum(g == cls != t for t, g in zip(truth, guess, strict=True))
        fn = sum(t == cls != g for t, g in zip(truth, guess, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def test_macro_f1_helper() -> None:
    assert _macro_f1(["a", "a", "b"], ["a", "a", "b"]) == 1.0
    assert _macro_f1(["a", "b"], ["b", "a"]) == 0.0
    assert abs(_macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) - (2 / 3 + 4 / 5) / 2) < 1e-12


def test_radlens_labeler_recovers_labels(specs: list[StudySpec], reports: list[str]) -> None:
    """radlens's rule-based CheXpert labeler reads the text back to the ground truth (macro F1 >= 0.98)."""
    from radlens.data.labeler import label_reports

    predicted = label_reports(reports)
    scores = {}
    for name in CHEXPERT_LABELS:
        truth = [str(labels_for(spec)[name]) for spec in specs]
        scores[name] = _macro_f1(truth, [str(labels[name]) for labels in predicted])
    assert sum(scores.values()) / len(scores) >= 0.98, scores


def test_sample_report_in_docs_is_current() -> None:
    """docs/phantom.md shows a real report: seed 0, the second study (regenerate it if this fails)."""
    docs = (Path(__file__).parents[2] / "docs" / "phantom.md").read_text(encoding="utf-8")
    spec = sample_studies(PhantomConfig(studies=48, seed=0))[1]
    assert f"study {spec.study_id}" in docs
    assert write_report(spec) in docs
