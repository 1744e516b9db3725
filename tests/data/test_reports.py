"""Report sections, cleaning and sentence splitting on the variants real MIMIC-CXR and IU X-ray reports have."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radlens.data.reports import DEID_TOKEN, clean_text, parse_report, report_text, split_sentences
from radlens.data.schema import ReportSections

MIMIC = "\n".join(
    [
        " " * 33 + "FINAL REPORT",
        " EXAMINATION:  CHEST (PA AND LAT)",
        " ",
        " INDICATION:  ___F with cough and fever, evaluate for pneumonia",
        " ",
        " TECHNIQUE:  Chest PA and lateral",
        " ",
        " COMPARISON:  ___",
        " ",
        " FINDINGS: ",
        " ",
        " The lungs are clear without focal consolidation.  No pleural effusion or",
        " pneumothorax is seen.  The cardiac and mediastinal silhouettes are",
        " unremarkable.",
        " ",
        " IMPRESSION: ",
        " ",
        " No acute cardiopulmonary process.",
        "",
    ]
)


def test_mimic_report_sections() -> None:
    sections = parse_report(MIMIC)
    assert sections.findings == (
        "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax is seen. "
        "The cardiac and mediastinal silhouettes are unremarkable."
    )
    assert sections.impression == "No acute cardiopulmonary process."
    assert sections.indication == "___F with cough and fever, evaluate for pneumonia"
    assert sections.comparison == "___"
    assert sections.technique == "CHEST (PA AND LAT)\nChest PA and lateral"  # EXAMINATION + TECHNIQUE
    assert sections.preamble is None  # the bare FINAL REPORT line is dropped
    assert sections.text() == f"{sections.findings}\n{sections.impression}"


def test_wet_read_header_and_rules_are_dropped_from_the_preamble() -> None:
    report = (
        " WET READ: ___ ___ ___ 4:34 PM\n"
        "  Small left effusion, no pneumothorax.\n"
        " ______________________________________________________________________________\n"
        "                                 FINAL REPORT\n"
        " IMPRESSION: Small left pleural effusion.\n"
    )
    sections = parse_report(report)
    assert sections.preamble == "Small left effusion, no pneumothorax."
    assert sections.impression == "Small left pleural effusion."
    assert sections.findings is None


def test_iu_single_line_report_and_xxxx_blanks() -> None:
    report = (
        "Indication: XXXX-year-old male, chest pain. Comparison: None. Findings: The heart is normal in "
        "size. The mediastinum is unremarkable. Impression: No acute disease."
    )
    sections = parse_report(report)
    assert sections.indication == f"{DEID_TOKEN}-year-old male, chest pain."
    assert sections.comparison == "None."
    assert sections.findings == "The heart is normal in size. The mediastinum is unremarkable."
    assert sections.impression == "No acute disease."


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ("findings:\nHeart normal.\nimpression:\nNo acute process.", ("Heart normal.", "No acute process.")),
        ("Findings\nHeart normal.\nImpression\nNo acute process.", ("Heart normal.", "No acute process.")),
        ("FINDINGS Heart normal.\nIMPRESSION No acute process.", ("Heart normal.", "No acute process.")),
        ("IMPRESSION: No acute process.\nFINDINGS: Heart normal.", ("Heart normal.", "No acute process.")),
        ("FINDINGS: Heart normal.\nCONCLUSION: No acute process.", ("Heart normal.", "No acute process.")),
        ("FINDINGS: Heart normal. IMPRESSION: No acute process.", ("Heart normal.", "No acute process.")),
        (
            "Findings:   Heart normal.\n\nImpressions:\n  No acute process.",
            ("Heart normal.", "No acute process."),
        ),
    ],
)
def test_heading_variants(report: str, expected: tuple[str, str]) -> None:
    sections = parse_report(report)
    assert (sections.findings, sections.impression) == expected


def test_impression_in_the_middle_and_repeated_headings() -> None:
    report = (
        "HISTORY: Dyspnea.\nFINDINGS: Small left effusion.\nIMPRESSION: Effusion.\n"
        "FINDINGS: Also a small right effusion.\nCOMPARISON: ___."
    )
    sections = parse_report(report)
    assert sections.findings == "Small left effusion.\nAlso a small right effusion."
    assert sections.impression == "Effusion."
    assert sections.indication == "Dyspnea."
    assert sections.comparison == "___."


def test_combined_findings_and_impression_heading() -> None:
    sections = parse_report("INDICATION: Fever.\nFINDINGS AND IMPRESSION: Right lower lobe pneumonia.")
    assert sections.impression == "Right lower lobe pneumonia."
    assert sections.findings is None
    assert sections.text() == "Right lower lobe pneumonia."  # not repeated
    assert parse_report("FINDINGS/IMPRESSION: Clear lungs.").impression == "Clear lungs."


def test_clinical_history_and_reason_for_exam_are_the_indication() -> None:
    assert parse_report("CLINICAL HISTORY: Cough.\nFINDINGS: Clear.").indication == "Cough."
    assert parse_report("REASON FOR EXAMINATION: Line placement.\nIMPRESSION: Ok.").indication == (
        "Line placement."
    )


def test_missing_sections_and_text_fallback() -> None:
    only_impression = parse_report("IMPRESSION: No acute process.")
    assert only_impression.findings is None and only_impression.indication is None
    assert only_impression.text() == "No acute process."
    unheaded = parse_report("Lungs are clear.\nNo effusion.")
    assert unheaded == ReportSections(preamble="Lungs are clear.\nNo effusion.")
    assert unheaded.text() == "Lungs are clear.\nNo effusion."
    assert parse_report("").text() == ""
    assert parse_report("FINDINGS:\n\nIMPRESSION: Normal.").findings is None  # empty section


# Older MIMIC-CXR reports: no FINDINGS / IMPRESSION heading, the body unheaded after a header section.
UNHEADED_AFTER_COMPARISON = "\n".join(
    [
        "                                 FINAL REPORT",
        " PORTABLE CHEST, ___",
        " ",
        " COMPARISON:  ___ radiograph.",
        " ",
        " Lines and tubes are in standard position.  No pneumothorax.",
        "",
    ]
)
UNHEADED_AFTER_REASON = "\n".join(
    [
        "                                 FINAL REPORT",
        " REASON FOR EXAMINATION:  Evaluation of the patient with pneumonia.",
        " ",
        " PA and lateral upright chest radiographs were reviewed in comparison to ___.",
        " ",
        " Heart size and mediastinum are stable.  Lungs are clear.",
        "",
    ]
)


def test_unheaded_body_after_a_header_section_is_the_findings() -> None:
    after_comparison = parse_report(UNHEADED_AFTER_COMPARISON)
    assert after_comparison.comparison == "___ radiograph."
    assert after_comparison.findings == "Lines and tubes are in standard position. No pneumothorax."
    assert after_comparison.preamble == "PORTABLE CHEST, ___"
    assert after_comparison.text() == after_comparison.findings
    after_reason = parse_report(UNHEADED_AFTER_REASON)
    assert after_reason.indication == "Evaluation of the patient with pneumonia."
    assert after_reason.findings == (
        "PA and lateral upright chest radiographs were reviewed in comparison to ___.\n"
        "Heart size and mediastinum are stable. Lungs are clear."
    )
    assert report_text(UNHEADED_AFTER_REASON) == after_reason.text()


def test_unheaded_paragraphs_stay_put_when_the_report_has_findings_or_impression() -> None:
    text = "COMPARISON: None.\n\nPA and lateral views.\n\nIMPRESSION: Normal."
    sections = parse_report(text)
    assert sections.comparison == "None.\nPA and lateral views." and sections.findings is None
    assert parse_report("INDICATION: Cough.").findings is None  # one paragraph: nothing to move


def test_unknown_headings_stay_in_their_section() -> None:
    sections = parse_report("IMPRESSION: Pneumothorax.\nNOTIFICATION: Discussed with Dr. ___ at 9 am.")
    assert sections.impression == "Pneumothorax.\nNOTIFICATION: Discussed with Dr. ___ at 9 am."


@pytest.mark.parametrize(
    "text",
    [
        "Findings are consistent with pneumonia.",  # a sentence, not a heading
        "The findings: a small effusion.",  # lower case inside a sentence
        "IMPRESSIONS OF THE DIAPHRAGM ARE NORMAL",  # capitals with nothing lower case after them
    ],
)
def test_words_that_are_not_headings(text: str) -> None:
    assert parse_report(text) == ReportSections(preamble=text)


def test_clean_text_joins_mimic_wrapping_and_keeps_paragraphs() -> None:
    wrapped = (
        " The lungs are clear without focal consolidation.  No pleural effusion or\n"
        " pneumothorax is seen.\n \n Heart size is normal.\n"
    )
    assert clean_text(wrapped) == (
        "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax is seen.\n"
        "Heart size is normal."
    )


def test_clean_text_keeps_short_unpunctuated_list_lines_apart() -> None:
    assert clean_text("No acute process\nStable cardiomegaly") == "No acute process\nStable cardiomegaly"
    assert clean_text("1. Small effusion.\n2. No pneumothorax.") == "1. Small effusion.\n2. No pneumothorax."
    assert clean_text("The heart is\nenlarged") == "The heart is enlarged"  # a wrap: lower case follows


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("Dr. ___ was paged.", "Dr. ___ was paged."),
        ("Dr. ____ was paged.", "Dr. ___ was paged."),
        ("XXXX-year-old with XXXX XXXX.", "___-year-old with ___ ___."),
        ("XX and XXX are not blanks; LXXXX neither.", "XX and XXX are not blanks; LXXXX neither."),
        ("Heart\u00a0size\tis   normal.", "Heart size is normal."),
        ("Text\r\nmore text", "Text more text"),
        (" _____________\n Findings here.\n =========\n", "Findings here."),
    ],
)
def test_clean_text_deid_and_whitespace(raw: str, cleaned: str) -> None:
    assert clean_text(raw) == cleaned


_PLAIN = st.text(
    alphabet="abcdefghijklmnopqrstuvwyzABCDEFGHIJKLMNOPQRSTUVWYZ0123456789.,;:? \t\n", max_size=300
)


@settings(max_examples=200, deadline=None)
@given(_PLAIN)
def test_clean_text_keeps_every_word_and_normalises_space(text: str) -> None:
    cleaned = clean_text(text)
    assert cleaned.split() == text.split()  # no de-id blanks or rules in this alphabet: words unchanged
    for line in cleaned.split("\n") if cleaned else []:
        assert line and line == line.strip() and "  " not in line and "\t" not in line


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Heart is normal. Lungs are clear.", ["Heart is normal.", "Lungs are clear."]),
        ("Nodule, e.g. granuloma, i.e. benign. Next.", ["Nodule, e.g. granuloma, i.e. benign.", "Next."]),
        ("Dr. ___ was notified. Done.", ["Dr. ___ was notified.", "Done."]),
        ("A 1.5 cm nodule. A 2.0 cm mass.", ["A 1.5 cm nodule.", "A 2.0 cm mass."]),
        ("Nodule measures approx. 8 mm. Stable.", ["Nodule measures approx. 8 mm.", "Stable."]),
        ("Atelectasis vs. pneumonia. No effusion.", ["Atelectasis vs. pneumonia.", "No effusion."]),
        (
            "IMPRESSION: 1. Small effusion. 2. No pneumothorax.",
            ["IMPRESSION: 1. Small effusion.", "2. No pneumothorax."],
        ),
        ("1. Small effusion. 2. No pneumothorax.", ["1. Small effusion.", "2. No pneumothorax."]),
        ("Pneumothorax? Unclear. Eval for ? PNA.", ["Pneumothorax?", "Unclear.", "Eval for ? PNA."]),
        (
            "Seen at 3 p.m. today. Called at 4 p.m. Then.",
            ["Seen at 3 p.m. today.", "Called at 4 p.m.", "Then."],
        ),
        ("Lines, tubes, etc. are in place.", ["Lines, tubes, etc. are in place."]),
        ("No acute process\nStable cardiomegaly", ["No acute process", "Stable cardiomegaly"]),
        ("Measuring 2. The heart is normal.", ["Measuring 2.", "The heart is normal."]),
        ("", []),
        ("  ", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


@settings(max_examples=200, deadline=None)
@given(_PLAIN)
def test_split_sentences_loses_no_characters(text: str) -> None:
    sentences = split_sentences(text)
    assert re.sub(r"\s", "", "".join(sentences)) == re.sub(r"\s", "", text)
    assert all(sentence == sentence.strip() and sentence for sentence in sentences)
