"""Radiology report text: section parsing, cleaning and sentence splitting (MIMIC-CXR and IU X-ray styles).

Sections. :func:`parse_report` finds the headings real reports use and files the text under them:

==============================================  ===============
heading (any case, colon optional)              section
==============================================  ===============
FINDINGS, FINDING                               ``findings``
IMPRESSION(S), CONCLUSION(S)                    ``impression``
FINDINGS AND IMPRESSION, FINDINGS/IMPRESSION    ``impression``
INDICATION(S), HISTORY, CLINICAL HISTORY,       ``indication``
REASON FOR EXAM(INATION), CLINICAL INFORMATION
COMPARISON(S)                                   ``comparison``
TECHNIQUE, EXAMINATION, EXAM                    ``technique``
==============================================  ===============

The combined "FINDINGS AND IMPRESSION" goes to ``impression`` as in MIMIC-CXR's own section parser
(``section_parser.py`` of the MIMIC-CXR code), so :meth:`ReportSections.text` does not repeat it.
A heading counts when it starts a line (any case; with a colon, or alone on its line, or in capitals
followed by text), or inside a line after a sentence end (``"... Findings: ..."``) or in capitals
(``"... IMPRESSION: ..."``) — IU X-ray reports are often one line. Sections may come in any order
(the impression in the middle, the findings last); a repeated heading appends. Any other heading
("NOTIFICATION:", "RECOMMENDATION(S):") is not a section break: its text stays in the section it
follows, so nothing is dropped. A report with neither FINDINGS nor IMPRESSION whose last heading is
INDICATION, COMPARISON or TECHNIQUE (older MIMIC-CXR reports write the body unheaded after them): that
heading keeps its first paragraph and the paragraphs after it become ``findings`` (MIMIC-CXR's own
``create_section_files.py`` likewise falls back to the last paragraph). Text before the first heading is the ``preamble``, without the bare
"FINAL REPORT" line, "WET READ:" headers (and the reader/time stamp after them) and ``____`` rules.

Cleaning (:func:`clean_text`) keeps the meaning and only normalises the form: Unicode NFKC (no-break
spaces), de-identification blanks — MIMIC's ``___`` and IU's ``XXXX`` — become one neutral token,
:data:`DEID_TOKEN` (``"___"``), separator rules are removed, runs of spaces collapse to one, and
line-wrapped text (MIMIC wraps at ~78 characters with leading spaces) is re-joined into paragraphs.
A short line (under 50 characters) followed by one that starts with a capital, digit or ``___`` is
kept as its own line (an unpunctuated list item, e.g. "No acute process" / "Stable cardiomegaly"), so
no sentence boundary is lost. Paragraphs and kept lines are separated by a single ``\\n``.

Sentences (:func:`split_sentences`) break at ``.``, ``!`` and ``?`` followed by a space, and at every
newline, but not after abbreviations ("e.g.", "i.e.", "Dr.", "approx.", "vs.", ...), inside decimals
("1.5 cm"), after list numbers ("1. No effusion. 2. ..."), or at a "?" that opens a phrase ("? PNA").
Hand-written rather than a library tokenizer (nltk/spaCy punkt) because neither is installed here, and
report text has its own conventions (list numbers, "? pna", de-id blanks) that generic models miss;
``tests/data/test_reports.py`` checks the edge cases.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from radlens.data.schema import ReportSections

#: The neutral token that replaces every de-identification blank (MIMIC ``___``, IU ``XXXX``).
DEID_TOKEN = "___"

# ----------------------------------------------------------------------------------------------- sections
_SECTION_OF: dict[str, str] = {
    "findings and impression": "impression",
    "findings/impression": "impression",
    "impression and findings": "impression",
    "findings": "findings",
    "finding": "findings",
    "impressions": "impression",
    "impression": "impression",
    "conclusions": "impression",
    "conclusion": "impression",
    "clinical indication": "indication",
    "indications": "indication",
    "indication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "clinical information": "indication",
    "clinical history": "indication",
    "history": "indication",
    "patient history": "indication",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "comparisons": "comparison",
    "comparison": "comparison",
    "type of examination": "technique",
    "technique": "technique",
    "examination": "technique",
    "exam": "technique",
}
# Longest first, so "findings and impression" wins over "findings"; spaces match any run of blanks.
_NAMES = "|".join(
    re.escape(name).replace(r"\ ", r"\s+").replace("/", r"\s*/\s*")
    for name in sorted(_SECTION_OF, key=len, reverse=True)
)
_UPPER_NAMES = "|".join(
    re.escape(name.upper()).replace(r"\ ", r"[ \t]+").replace("/", r"[ \t]*/[ \t]*")
    for name in sorted(_SECTION_OF, key=len, reverse=True)
)
#: Sections that hold one short paragraph; unheaded paragraphs after them are the report's body.
_HEADER_SECTIONS = frozenset({"indication", "comparison", "technique"})
# Headings are looked for line by line (a regex over the whole text costs a try at every character):
# at the line start, then, only in lines with a colon, inside the line.
_LINE_HEADING = re.compile(
    rf"[ \t]*(?:(?i:(?P<a>{_NAMES}))[ \t]*:"  # any case, colon
    rf"|(?i:(?P<b>{_NAMES}))[ \t]*$"  # alone on its line, any case
    rf"|(?P<c>{_UPPER_NAMES})[ \t]+(?=.*[a-z]))"  # capitals then ordinary text, no colon
)
_INLINE_HEADING = re.compile(
    rf"(?<=[.!?])[ \t]+(?i:(?P<d>{_NAMES}))[ \t]*:"  # after a sentence end, any case, colon
    rf"|(?<=[ \t])(?P<e>{_UPPER_NAMES})[ \t]*:"  # capitals, colon
)
_FINAL_REPORT = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE | re.IGNORECASE)
_WET_READ = re.compile(
    r"WET[ \t]*READ(?:[ \t]+VERSION[ \t]*#?\d+)?[ \t]*:?(?:[ \t]*(?:_{2,}|X{4,}))*"
    r"(?:[ \t]*\d{1,2}:\d{2}(?:[ \t]*[AP]\.?M\.?)?)?",
    re.IGNORECASE,
)


def parse_report(text: str) -> ReportSections:
    """Split a free-text report into :class:`ReportSections`, each cleaned by :func:`clean_text`.

    See the module docstring for the headings recognised and their variants. "The report" — what
    models read and the labeler labels — is :meth:`ReportSections.text`: findings and impression
    joined by a newline; whichever of the two exists when only one does; the preamble when neither
    does (an impression-only export with no heading lands there); else ``""``. Absent or empty
    sections are ``None``.
    """
    preamble, parts = _split_sections(text)
    sections = {key: clean_text("\n\n".join(chunks)) or None for key, chunks in parts.items()}
    return ReportSections(preamble=clean_text(preamble) or None, **sections)


def report_text(text: str) -> str:
    """``parse_report(text).text()``, cleaning only the sections it needs (the labeler's fast path)."""
    preamble, parts = _split_sections(text)
    found = [clean_text("\n\n".join(parts[key])) for key in ("findings", "impression") if key in parts]
    found = [section for section in found if section]
    return "\n".join(found) if found else clean_text(preamble)


def _split_sections(text: str) -> tuple[str, dict[str, list[str]]]:
    """The raw preamble (without FINAL REPORT / WET READ lines) and the raw text chunks of each section."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts: dict[str, list[str]] = {}
    preamble_end = len(text)
    current: str | None = None
    start = 0
    for heading_start, heading_end, name in _headings(text):
        section = _SECTION_OF[" ".join(name.lower().replace("/", " / ").split()).replace(" / ", "/")]
        if current is None:
            preamble_end = heading_start
        else:
            parts.setdefault(current, []).append(text[start:heading_start])
        current, start = section, heading_end
    if current is not None:
        parts.setdefault(current, []).append(text[start:])
        _move_unheaded_body(parts, current)
    return _WET_READ.sub("", _FINAL_REPORT.sub("", text[:preamble_end])), parts


def _move_unheaded_body(parts: dict[str, list[str]], last: str) -> None:
    """File the unheaded body of a report with neither FINDINGS nor IMPRESSION under ``findings``.

    Such reports (older MIMIC-CXR ones) put the body, without a heading, in paragraphs after a short
    INDICATION / COMPARISON / TECHNIQUE line. Left there, "the report" would be empty or the exam title.
    The heading keeps its first paragraph; the later paragraphs are the findings.
    """
    if last not in _HEADER_SECTIONS or "findings" in parts or "impression" in parts:
        return
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(parts[last][-1]) if p.strip()]
    if len(paragraphs) > 1:
        parts[last][-1] = paragraphs[0]
        parts["findings"] = ["\n\n".join(paragraphs[1:])]


def _headings(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, heading name) of every recognised heading, in text order."""
    offset = 0
    for line in text.split("\n"):
        position = 0
        match = _LINE_HEADING.match(line)
        if match is not None:
            yield offset + match.start(), offset + match.end(), next(g for g in match.groups() if g)
            position = match.end()
        if ":" in line[position:]:
            for match in _INLINE_HEADING.finditer(line, position):
                yield offset + match.start(), offset + match.end(), next(g for g in match.groups() if g)
        offset += len(line) + 1


# ----------------------------------------------------------------------------------------------- cleaning
_SEPARATOR_LINE = re.compile(r"^[ \t]*[_=*~-]{5,}[ \t]*$", re.MULTILINE)
_DEID = re.compile(r"_{2,}|(?<![A-Za-z])X{4,}(?![A-Za-z])")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SHORT_LINE = 50  # MIMIC wraps near 78 characters: a wrapped line is never this short
_OPENS_LINE = re.compile(r"[A-Z0-9]|___")


def clean_text(text: str) -> str:
    """Normalise a report's form without changing its words (see the module docstring).

    De-identification blanks become :data:`DEID_TOKEN`; wrapped lines are re-joined; paragraphs and
    short unpunctuated list lines stay on their own lines, separated by one ``\\n``; no line has
    leading, trailing or repeated spaces; there are no blank lines.
    """
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "_____" in text or "-----" in text or "=====" in text or "*****" in text or "~~~~~" in text:
        text = _SEPARATOR_LINE.sub("", text)
    if "__" in text or "XXXX" in text:  # cheap guards: the regexes scan every character
        text = _DEID.sub(DEID_TOKEN, text)
    lines_out: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        lines = [" ".join(line.split()) for line in paragraph.split("\n")]
        lines = [line for line in lines if line]
        merged: list[str] = []
        for line in lines:
            if merged and not _keeps_break(merged[-1], line):
                merged[-1] = f"{merged[-1]} {line}"
            else:
                merged.append(line)
        lines_out.extend(merged)
    return "\n".join(lines_out)


def _keeps_break(previous: str, line: str) -> bool:
    """Whether the line break between ``previous`` and ``line`` is real (not a wrap)."""
    return len(previous) < _SHORT_LINE and previous[-1] not in ",;:-" and bool(_OPENS_LINE.match(line))


# ----------------------------------------------------------------------------------------------- sentences
_CANDIDATE = re.compile(r"[.!?]+(?=\s|$)|\n")
#: Abbreviations a sentence never ends with ("no." is "number": a bare "No." is not a report sentence).
_NEVER_ENDS = frozenset(
    {"e.g", "eg", "i.e", "ie", "dr", "drs", "mr", "mrs", "ms", "prof", "approx", "appr", "vs", "cf", "viz"}
    | {"fig", "figs", "st", "sr", "jr", "incl", "resp", "esp", "no", "nos"}
)
_MAY_END = frozenset({"etc", "al"})  # end a sentence only when a capital follows
_LIST_NUMBER = re.compile(r"\(?\d{1,2}\)?")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (see the module docstring for the rules); whitespace-trimmed, non-empty.

    The sentences are the text's own characters: list numbers ("1.") stay at the start of their item.
    """
    sentences: list[str] = []
    start = 0
    for match in _CANDIDATE.finditer(text):
        if not _is_boundary(text, start, match):
            continue
        sentence = text[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _is_boundary(text: str, start: int, match: re.Match[str]) -> bool:
    """Whether ``match`` (a newline or a run of ``.!?``) ends the sentence that began at ``start``."""
    mark = match.group()
    if mark == "\n":
        return True
    end = match.start()
    word_start = max(text.rfind(" ", start, end), text.rfind("\t", start, end), start - 1) + 1
    if word_start == end:  # punctuation right after the sentence start or a space: "? pna", ". ."
        return False
    if mark[0] in "!?":
        return True
    word = text[word_start:end].lstrip("([\"'").lower()
    if word in _NEVER_ENDS:
        return False
    if word in _MAY_END or "." in word:  # "etc.", "a.m.", "P.A.": a sentence end only before a capital
        following = text[match.end() : match.end() + 40].lstrip(" \t")
        return not following or following[0].isupper() or following[0] == "\n"
    if _LIST_NUMBER.fullmatch(word):  # "1." opening a list item: the item, not a sentence, starts here
        preceding = text[start:word_start].rstrip()
        return not (preceding == "" or preceding[-1] in ".:;!?")
    return True
