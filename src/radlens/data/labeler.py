"""A transparent CheXpert-style rule labeler: report text -> 14 observations as 1 / 0 / -1 / blank.

Why hand-written. The reference, Stanford's CheXpert labeler (NegBio-based), needs the BLLIP parser,
the Stanford dependency converter (Java) and an old pinned environment, none of which can be installed
here (no network, no Java). This module re-implements the same *conventions* compactly with regular
expressions: mention phrases per observation, negation and uncertainty cues within a scope, and
CheXpert's aggregation. It is checked against ``tests/data/labeler_sentences.tsv`` (hand-labelled
sentences) and RadPhantom's labels; ``docs/labeler.md`` has the per-class results. It is fast
(thousands of reports per second on one core): patterns are compiled once, each clause is scanned
once for mentions and cues together (:class:`_Scanner`), and per-sentence results are cached.

Rules, in order:

1. **Text.** :func:`label_report` labels "the report": :meth:`ReportSections.text` of
   :func:`radlens.data.reports.parse_report` (findings + impression, else the text before the first
   heading), so the indication ("evaluate for pneumonia") never counts; when that is empty, the whole
   text. It is cleaned, split into sentences (:func:`split_sentences`) and lower-cased.
2. **Scope.** Each sentence is cut into clauses at ``;``, ``:`` (not before a bare answer:
   "Pneumothorax: none.", "Heart size: normal."), "but", "however", "although", "though", "whereas",
   "except (for)", "with the exception of", "aside/apart from", "other than", "otherwise"; before
   ", there is/are"; at a comma whose next segment has a verb (or "unlikely", "not likely"...) and no
   "and/or" before it ("No edema, the heart is enlarged"); and at " and " when both sides have a
   verb ("There is an effusion and the pneumothorax has resolved"). Cues act only inside their clause.
3. **Mentions** (:data:`_MENTIONS`). *Findings* name an observation (with synonyms, plurals and
   spelling variants: "effusions", "blunting of the costophrenic angle", "PTX", "ET tube"...); a few
   name two ("hydropneumothorax", "nodular opacity"). *Anatomy* names a structure whose normality
   negates an observation ("heart size", "mediastinal contours", "costophrenic angles"): it is labelled
   0 when a *normal* cue applies ("is normal", "unremarkable", "within normal limits", "sharp") and is
   ignored otherwise ("heart size is stable" says nothing). *Other* abnormalities (emphysema,
   granuloma, hernia, scoliosis...) are not labelled but block "No Finding", as in CheXpert.
4. **Cues** (:data:`_CUES`) are negation, uncertainty or normality words, each acting *before* a
   mention ("no", "without", "possible"), *after* it ("has resolved", "cannot be excluded", "is
   normal") or both ("versus", "?": these reach only the nearest mention on each side). *Pseudo-cues*
   are consumed so that their words do not fire: "no change", "not significantly changed", "to
   suggest" ("no opacity to suggest pneumonia" negates pneumonia), "not well seen", device advice
   ("could be withdrawn 2 cm"). Uncertainty phrases containing "not" ("cannot be excluded") are
   matched before negation. A qualifier ("concerning for", "suggestive of") after a negation belongs
   to the negated phrase ("no consolidation concerning for pneumonia": pneumonia 0). "Rule out" /
   "r/o" are uncertain (CheXpert); so are "likely" and "less likely". *Hedged negation* ("unlikely",
   "doubtful", "not likely", "not suspected") is a negation, as NegEx's "unlikely" (CheXpert's patterns
   have no rule for it): after a copula or at a clause end it negates what precedes ("Pneumonia is
   unlikely"), otherwise what follows ("opacity, unlikely to represent pneumonia"). A bare answer after
   a colon ("Pneumothorax: none / no / negative") is a negation.
5. **Value of a mention.** The *nearest* applicable negation or uncertainty cue decides: negation 0,
   uncertainty -1, none 1 ("No effusion, possible small pneumothorax": effusion 0, pneumothorax -1).
6. **Aggregation** (CheXpert): per observation, positive beats uncertain beats negative across all
   mentions; never mentioned is blank (``None``). A positive or uncertain "heart failure"/"CHF" makes
   Cardiomegaly uncertain when it is otherwise blank (the CheXpert labeler's exception).
7. **No Finding** is 1 when no observation except Support Devices, and no *other* abnormality, is
   positive or uncertain; otherwise blank. It is never 0 or -1. An empty report is all blank.

Deliberate differences from the CheXpert labeler: "costophrenic angles are sharp" is an effusion
negative, "volume loss" is atelectasis, sternotomy wires and surgical clips are support devices.

Label relations (:func:`identical_label_sets`, :func:`share_positive`, :func:`no_positive_in_common`)
compare label dicts by their *positive* sets: an observation is positive when its value ``== 1``;
uncertain (-1), negative (0) and blank (``None``/missing) are all "not positive".
"""

from __future__ import annotations

import functools
import re
import re._constants as _sre_constants  # the parsed form of a pattern, read by _prefixes (Python >= 3.11)
import re._parser as _sre_parser
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from radlens.data.reports import clean_text, report_text, split_sentences
from radlens.data.schema import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN, LabelValue

# ------------------------------------------------------------------------------------------------ mentions
FINDING, ANATOMY, OTHER = "finding", "anatomy", "other"

_DEGREE = (
    r"(?:mildly|moderately|markedly|severely|slightly|massively|minimally|significantly|substantially|"
    r"grossly|borderline|somewhat|very|quite|persistently|stably|again|still|now|also|not|likely|probably|"
    r"possibly|perhaps|may|might|could|be|is|are|appears?|remains?|seems?|looks?|size|and|unchanged|stable)"
)
_GAP = rf"(?: {_DEGREE}){{0,5}}"  # "the heart is not enlarged", "heart size may be mildly enlarged"
_HEART = r"(?:heart(?: size)?|cardiac (?:silhouette|size|shadow|contours?)|size of the heart)"
_MEDIASTINUM = (
    r"(?:(?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?|width|shadow|structures)))"
)
_SIDES = r"(?:(?:right|left|bilateral|both|posterior|lateral|the) )*"

#: (observations, kind, patterns) in matching priority: at one position the first entry that matches wins,
#: so multi-observation and longer phrases come first. Patterns are lower-case regex fragments.
_MENTIONS: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("Pneumothorax", "Pleural Effusion"), FINDING, (r"hydropneumothora(?:x|ces|xes)",)),
    (
        ("Lung Lesion", "Lung Opacity"),
        FINDING,
        (r"nodular (?:opacit(?:y|ies)|densit(?:y|ies)|opacification)",),
    ),
    (
        ("Cardiomegaly", "Enlarged Cardiomediastinum"),
        ANATOMY,
        (
            r"(?:cardiac|heart) and mediastinal (?:silhouettes?|contours?)",
            r"mediastinal and cardiac contours?",
        ),
    ),
    (("Edema",), FINDING, (r"(?:congestive )?heart failure", r"chf")),  # before the anatomy "heart"
    (
        ("Cardiomegaly",),
        FINDING,
        (
            r"cardiomegaly",
            r"cardiac enlargement",
            r"(?:enlarged|enlarging|large) (?:heart|cardiac (?:silhouette|shadow|size|contours?))",
            r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|contours?))",
            rf"{_HEART}{_GAP} (?:enlarged|increased|large|borderline(?: in size)?)",
        ),
    ),
    (
        ("Enlarged Cardiomediastinum",),
        FINDING,
        (
            r"(?:enlarged|widened|wide|prominent) (?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
            r"(?:widening|enlargement|prominence) of the (?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
            r"(?:superior )?mediastinal (?:widening|enlargement|prominence)",
            rf"{_MEDIASTINUM}{_GAP} (?:enlarged|widened|wide|widening|prominent)",
        ),
    ),
    (
        ("Pleural Other",),
        FINDING,
        (
            r"(?:calcified )?pleural (?:thickening|plaques?|scar(?:ring|s)?|calcifications?|fibrosis)",
            r"pleuro-?parenchymal (?:scar(?:ring|s)?|thickening|changes?)",
            r"pleural-parenchymal (?:scar(?:ring|s)?|thickening)",
            r"thickening of the (?:\w+ )?pleura",
            r"fibrothorax",
            r"apical (?:pleural )?(?:cap|capping)",
        ),
    ),
    (
        ("Pleural Effusion",),
        FINDING,
        (
            r"(?<!pericardial )effusions?",
            r"pleural fluid",
            r"hydrothorax",
            rf"blunt(?:ing|ed|s)? (?:of )?{_SIDES}costophrenic (?:angles?|sulc(?:us|i))",
            r"costophrenic (?:angles?|sulc(?:us|i))(?: (?:is|are|remains?|again|mildly|minimally|slightly))* blunt(?:ed|ing)",
            r"layering fluid",
            r"fissural fluid",
        ),
    ),
    (("Pneumothorax",), FINDING, (r"pneumothora(?:x|ces|xes)", r"ptx")),
    (("Atelectasis",), FINDING, (r"atelecta\w*", r"collaps(?:e|ed|ing)", r"volume loss")),
    (("Consolidation",), FINDING, (r"consolidat\w*",)),
    (
        ("Edema",),
        FINDING,
        (
            r"(?<!soft tissue )edema(?:tous)?",
            r"congestion|engorgement",  # "pulmonary vascular congestion"
            r"fluid overload|volume overload",
            r"kerley b lines?",
            r"(?:vascular|perihilar|hilar) (?:indistinctness|haziness|blurring)",
            r"indistinct (?:pulmonary )?(?:vessels|vasculature|vascular markings)",
        ),
    ),
    (("Pneumonia",), FINDING, (r"(?:broncho)?pneumon\w*", r"pna", r"infections?", r"infectious(?: \w+)?")),
    (
        ("Lung Lesion",),
        FINDING,
        (
            r"nodules?",
            r"mass(?:es)?",
            r"mass-?like",
            r"(?:(?<=lung )|(?<=pulmonary )|(?<=parenchymal )|(?<=cavitary )|(?<=spiculated ))lesions?",
            r"tumou?rs?",
            r"neoplasms?",
            r"carcinoma",
            r"cancer",
            r"malignancy",
            r"lump",
        ),
    ),
    (
        ("Lung Opacity",),
        FINDING,
        (
            r"opacit(?:y|ies)",
            r"opacifi\w*",
            r"air[- ]?space (?:disease|opacit(?:y|ies)|process|filling|shadowing)",
            r"infiltrat\w*",
            r"(?<!bone )densit(?:y|ies)",
            r"interstitial (?:markings?|opacit(?:y|ies)|pattern|abnormalit(?:y|ies)|(?:lung )?disease|prominence|thickening|changes?)",
            r"reticula(?:r|tion)\w*",
            r"reticulonodular",
            r"ground[- ]glass",
            r"haziness|hazy",
            r"(?:parenchymal )?scar(?:ring|s)?",
            r"peribronchial (?:thickening|cuffing)",
            r"bronchial wall thickening",
            r"white-?out",
        ),
    ),
    (("Fracture",), FINDING, (r"fractur\w*", r"fx")),
    (
        ("Support Devices",),
        FINDING,
        (
            r"(?:endotracheal|tracheostomy|trach|nasogastric|orogastric|feeding|enteric|gastric|chest|"
            r"thoracostomy|dobb?hoff|et|ng|og|ngt|ogt|pleural|mediastinal|drainage|nasoenteric|gastrostomy|"
            r"jejunostomy|g|j)[- ]?tubes?",
            r"tubes?",
            r"ett",
            r"picc(?: lines?)?",
            r"(?:central|venous|cvc|hemodialysis|dialysis|tunnel+ed|swan[- ]ganz|arterial|ij|subclavian|"
            r"femoral|triple[- ]lumen|port)(?: \w+)? lines?",  # "... catheter": see "catheters?"
            r"catheters?",
            r"port-?a-?cath|mediport|(?:chest wall |power |infusion )?port",
            r"pace(?:maker|r)s?",
            r"pacing (?:wires?|leads?|device)",
            r"a?icd|defibrillator",
            r"(?:pacemaker|pacer|icd|cardiac|transvenous|epicardial|ecg|ekg|monitoring|telemetry) (?:leads?|wires?|pads?)",
            r"leads?",
            r"(?:median )?sternotomy(?: wires?)?|sternal wires?",
            r"(?:surgical )?clips",
            r"(?:orthopedic |spinal |fixation )?hardware",
            r"(?:intra-?aortic )?balloon pump|iabp|impella|lvad|ventricular assist device",
            r"stents?",
            r"(?:valve replacement|prosthetic valve|mechanical valve)",
            r"drains?",
            r"pigtail",
            r"(?:support |monitoring |cardiac )?devices?",
            r"electrodes?",
        ),
    ),
    (("Cardiomegaly",), ANATOMY, (_HEART,)),
    (("Enlarged Cardiomediastinum",), ANATOMY, (_MEDIASTINUM, r"cardiomediastinal")),
    (("Pleural Effusion",), ANATOMY, (r"costophrenic (?:angles?|sulc(?:us|i))",)),
    (
        (),
        OTHER,
        (
            r"emphysema(?:tous)?",
            r"hyper-?infla\w*|hyper-?expan\w*|over-?infla\w*",
            r"copd|chronic obstructive",
            r"granulom\w*",
            r"hernias?",
            r"pneumomediastinum|pneumoperitoneum|free (?:intraperitoneal |subdiaphragmatic )?air",
            r"bronchiectasis",
            r"fibrosis|fibrotic",
            r"scoliosis|kyphosis|kyphotic",
            r"degenerative (?:changes?|disease)|spondylosis|osteophytes?",
            r"calcifi\w*",
            r"elevat\w* (?:of the )?(?:right |left )?hemi-?diaphragms?|hemi-?diaphragms? (?:is |are )?elevated",
            r"eventration",
            r"tortuous|tortuosity|unfolding of the (?:thoracic )?aorta|atherosclero\w*",
            r"cephalization",
            r"bullae|bullous|blebs?",
            r"metasta\w*",
            r"osteopenia|demineralization",
            r"aspiration",
            r"bronchitis|bronchiolitis|airways? disease|reactive airway",
            r"(?:lymph)?adenopathy",
            r"cavit\w*",
            r"contusions?",
            r"thickening",
        ),
    ),
)

# -------------------------------------------------------------------------------------------------- cues
NEG, UNC, QUALIFIER, NORMAL, PSEUDO = "negation", "uncertainty", "qualifier", "normal", "pseudo"
PRE, POST, BOTH = "pre", "post", "both"

_COPULA_BEFORE = (  # a lookbehind: the cue follows a copula ("pneumonia is unlikely")
    r"(?:(?<=\bis )|(?<=\bare )|(?<=\bwas )|(?<=\bwere )|(?<=\bbe )|(?<=\bremains )|(?<=\bremain )|"
    r"(?<=\bappears )|(?<=\bappear )|(?<=\bseems )|(?<=\bseem ))"
)
_JUDGED = r"(?:(?:considered|felt|thought|deemed|believed)(?: to be)? )?"  # "is considered unlikely"
#: What may follow "X is unlikely" for it to negate X: a clause end or an adverbial, never a noun ("the
#: opacity is not likely pneumonia") nor "to"/"that" ("is unlikely to represent pneumonia").
_HEDGE_END = (
    r"(?= ?(?:[.,;:?!]|$)| (?:given|in|on|at|as|because|based|clinically|radiographically|from|with|"
    r"considering|now|currently|today|here|anymore)\b)"
)
#: A one-word negative answer after a colon ("Pneumothorax: none."): a negation cue (in :data:`_CUES`),
#: and so, like "normal" or "absent" (their own cues), no clause break (:data:`_CLAUSE_BREAK`).
_BARE_NO = r"(?:none|no|nil|negative)"
_UNLIKELY = (
    r"(?:(?:(?:very|highly|quite|most|extremely) )?(?:unlikely|improbable|doubtful)"
    r"|not (?:very |particularly |clinically |strongly )?(?:likely|probable|suspected|favou?red))"
)

#: (pattern, kind, direction) in matching priority: pseudo-cues and phrases containing other cues first.
_CUES: tuple[tuple[str, str, str], ...] = (
    # pseudo-cues: consumed so that the cue words inside them do not act
    (
        r"no (?:(?:significant|substantial|appreciable|major|definite|apparent|interval|further|real|other) )*"
        r"(?:change|increase|decrease|worsening|improvement|progression|difference)s?",
        PSEUDO,
        BOTH,
    ),
    (
        r"not (?:significantly |substantially |markedly |appreciably )?"
        r"(?:changed|increased|decreased|worsened|improved|different)",
        PSEUDO,
        BOTH,
    ),
    (
        r"without (?:(?:significant|substantial|appreciable|interval) )*(?:change|worsening|progression)s?",
        PSEUDO,
        BOTH,
    ),
    (
        r"not well (?:seen|visualized|evaluated|assessed|delineated|demonstrated)|not only|gram[- ]negative",
        PSEUDO,
        BOTH,
    ),
    (r"to suggest", PSEUDO, BOTH),
    (  # advice about a device, not its removal: "could be withdrawn 2 cm"
        r"(?:could|should|can|may|might|would|will|recommend(?:ed)?) (?:be |need to be |to be )?"
        r"(?:removed|withdrawn|retracted|advanced|pulled back|repositioned)",
        PSEUDO,
        BOTH,
    ),
    # hedged negation ("unlikely", "not likely", "doubtful", "not suspected"): a negation, as NegEx's
    # "unlikely" [POST]; before the uncertainty cues, so "not likely" and "considered unlikely" are not
    # read as "not" + "likely" or as "considered". After a copula, or at a clause end, it negates what it
    # follows ("Pneumonia is unlikely", "pneumonia unlikely."); otherwise what comes after it
    # ("opacity, unlikely to represent pneumonia": the opacity stays positive).
    (
        rf"{_COPULA_BEFORE}{_JUDGED}{_UNLIKELY}(?: to be (?:present|seen|identified))?{_HEDGE_END}",
        NEG,
        POST,
    ),
    (rf"{_JUDGED}{_UNLIKELY}(?= ?(?:[.,;:?!]|$))", NEG, POST),
    (_UNLIKELY, NEG, PRE),
    # uncertainty written with negation words, before the negation cues
    (
        r"(?:can ?not|can't|could not|unable to|impossible to|not possible to) "
        r"(?:entirely |completely |definitely |totally |confidently |reliably )?(?:exclude|rule out)",
        UNC,
        PRE,
    ),
    (
        r"(?:(?:can ?not|can't|could not|may not|might not) (?:be )?|not (?:yet )?)"
        r"(?:entirely |completely |definitely |totally |confidently )?(?:excluded|ruled out)",
        UNC,
        POST,
    ),
    (r"(?:difficult|hard) to (?:entirely )?(?:exclude|rule out)", UNC, BOTH),
    (
        r"(?:may|might|could|can) (?:also )?(?:be )?(?:present|seen|noted|developing|superimposed|"
        r"contributing|coexistent|underlying|considered)",
        UNC,
        POST,
    ),
    (
        r"(?:(?<=\bis )|(?<=\bare )|(?<=\bwas )|(?<=\bwere )|(?<=\bbe )|(?<=\bremains )|(?<=\bremain ))"
        r"(?:(?:most|more|less|quite|also) )?"
        r"(?:likely|probable|possible|suspected|questioned|considered|not excluded)(?= ?(?:[.,;:?!]|$))",
        UNC,
        POST,
    ),
    (r"versus|vs\.?", UNC, BOTH),
    (
        r"suspicious (?:for|of)|suggest(?:s|ed|ing|ive(?: of)?)?|concerning(?: for)?|worrisome(?: for)?",
        QUALIFIER,
        PRE,
    ),
    (
        r"may|might|could|possibl[ey]|probabl[ey]|(?:most |more )?likely|suspect(?:ed|s)?|"
        r"suspicion (?:of|for)|concern for|question of|questionabl[ey]|equivocal|indeterminate|borderline|"
        r"presum\w+|perhaps|maybe|potential(?:ly)?|consider(?:ed)?|(?:to )?rule out|r/o|to exclude|"
        r"(?:to )?(?:evaluate|eval|assess) for|differential (?:diagnosis )?(?:includes?|of|would include)",
        UNC,
        PRE,
    ),
    # negation
    (  # a bare answer after a colon, "Pneumothorax: none." (such a colon does not end the clause)
        rf"(?:(?<=: )|(?<=:)){_BARE_NO}(?: (?:seen|identified))?(?= *(?:[.,;?!]|$))",
        NEG,
        POST,
    ),
    (
        r"no longer(?: (?:seen|visible|visualized|present|evident|identified|appreciated|demonstrated|apparent))?",
        NEG,
        POST,
    ),
    (
        r"not (?:\w+ )?(?:seen|identified|appreciated|visualized|"
        r"visible|present|evident|demonstrated|detected|noted|observed|apparent|shown)",
        NEG,
        POST,
    ),
    (
        r"(?:(?:completely|nearly|almost|largely|essentially) )?(?:resolved|removed|cleared|ruled out|excluded)"
        r"|absent",
        NEG,
        POST,
    ),
    (
        r"free of|clear of|negative for|absence of|lack of|resolution of|removal of|no|without|nor|"
        r"neither|nothing|none|not",
        NEG,
        PRE,
    ),
    # normality: applies to anatomy mentions only
    (
        r"within normal limits|upper limits? of normal|(?:top|upper|high)[- ]normal|"
        r"normal in (?:size|caliber|contour|configuration)|unremarkable|normal(?:ly)?(?:[- ]sized?)?|"
        r"sharp(?:ly (?:defined|demarcated))?|preserved|clear",
        NORMAL,
        BOTH,
    ),
)
_QUESTION_MARK = (r"\?", UNC, BOTH)  # "pneumonia?" and "? pna"
_NORMAL_BEFORE_MAX = 12  # "normal heart size", "normal-sized heart": a preceding "normal" must be adjacent


_PREFIX_LENGTH = 3
_WORD_START = r"(?<!\w)"
_Match = tuple[int, int, Any]  # (start, end, value of the pattern that matched)


class _Alternation:
    """One ordered pattern list: each pattern a named branch that ends at a word end (and starts at a
    word start when it begins with a word character); the first pattern in list order wins."""

    def __init__(self, patterns: list[tuple[str, Any]]) -> None:
        self.values = [value for _, value in patterns]
        self.by_prefix: dict[str, list[int]] = {}
        self.branches: list[str] = []
        for index, (pattern, _) in enumerate(patterns):
            prefixes = _prefixes(pattern)
            for prefix in prefixes:
                self.by_prefix.setdefault(prefix, []).append(index)
            at_word_start = all(prefix[:1].isalnum() for prefix in prefixes)
            self.branches.append(rf"(?P<p{index}>{_WORD_START if at_word_start else ''}(?:{pattern})(?!\w))")
        self._matchers: dict[str, re.Pattern[str] | None] = {}

    def matcher(self, head: str) -> re.Pattern[str] | None:
        """The alternation of the patterns that can start with ``head`` (<= 3 characters); cached."""
        if head not in self._matchers:
            keys = {head[:length] for length in range(len(head) + 1)}
            indices = sorted({i for key in keys for i in self.by_prefix.get(key, ())})
            branches = "|".join(self.branches[i] for i in indices)
            self._matchers[head] = re.compile(branches) if indices else None
        return self._matchers[head]


class _Scanner:
    """Finds, in one pass, the matches of several pattern lists, each exactly as one alternation would.

    For each list the result equals ``finditer`` of :meth:`reference`: leftmost match first, at one
    position the first pattern in list order, no overlaps. Python's ``re`` tries every branch of an
    alternation at every character (about 1 ms per report here), so this finds candidate positions
    with one small regex (a trie of all patterns' first characters, read from the parsed patterns) and
    tries there only the patterns that can start with the text found. ``tests/data/test_labeler.py``
    checks it against :meth:`reference`.
    """

    def __init__(self, *lists: list[tuple[str, Any]]) -> None:
        self._lists = [_Alternation(patterns) for patterns in lists]
        prefixes = {prefix for alternation in self._lists for prefix in alternation.by_prefix}
        word = [prefix for prefix in prefixes if prefix[:1].isalnum()]
        other = [prefix for prefix in prefixes if not prefix[:1].isalnum()]
        starts = [rf"{_WORD_START}(?={_trie(word)})"] if word else []
        starts += [rf"(?={_trie(other)})"] if other else []  # "" (unknown start) makes this every position
        # Zero-width, so that a candidate that fails to match never hides the next one.
        self._starts = re.compile("|".join(starts))

    def reference(self, which: int) -> re.Pattern[str]:
        """The plain alternation of list ``which`` (slow; for tests)."""
        return re.compile("|".join(self._lists[which].branches))

    def values(self, which: int) -> list[Any]:
        """The values of list ``which``, in pattern order."""
        return self._lists[which].values

    def scan(self, text: str) -> list[list[_Match]]:
        """For each list, the (start, end, value) of its matches in ``text``, left to right."""
        found: list[list[_Match]] = [[] for _ in self._lists]
        covered = [0] * len(self._lists)
        for candidate in self._starts.finditer(text):
            position = candidate.start()
            head = text[position : position + _PREFIX_LENGTH]
            for which, alternation in enumerate(self._lists):
                if position < covered[which]:
                    continue
                matcher = alternation.matcher(head)
                match = matcher.match(text, position) if matcher is not None else None
                if match is not None:
                    covered[which] = match.end()
                    value = alternation.values[int(match.lastgroup[1:])]  # type: ignore[index]
                    found[which].append((position, match.end(), value))
        return found


def _trie(prefixes: list[str]) -> str:
    """A regex matching any of ``prefixes``, factored by leading character (``re`` tries branches in turn)."""
    if "" in prefixes:
        return ""
    by_first: dict[str, list[str]] = {}
    for prefix in prefixes:
        by_first.setdefault(prefix[0], []).append(prefix[1:])
    return (
        "(?:" + "|".join(re.escape(first) + _trie(rests) for first, rests in sorted(by_first.items())) + ")"
    )


def _prefixes(pattern: str) -> set[str]:
    """Strings of <= 3 characters, one of which starts every match of ``pattern`` ("" if unknown)."""
    try:
        return {head for head, _ in _heads(list(_sre_parser.parse(pattern)))}
    except Exception:  # an unexpected construct or Python version: try it everywhere (slower, still exact)
        return {""}


def _heads(items: list[Any]) -> set[tuple[str, bool]]:
    """(head, closed) pairs for a parsed sequence; ``closed``: nothing more can be appended to ``head``."""
    states = {("", False)}
    for op, argument in items:
        options = _item_heads(op, argument)
        if options is None:  # zero-width: boundaries, lookarounds
            continue
        grown = set()
        for head, closed in states:
            if closed:
                grown.add((head, True))
                continue
            for tail, tail_closed in options:
                joined = head + tail
                grown.add((joined[:_PREFIX_LENGTH], tail_closed or len(joined) >= _PREFIX_LENGTH))
        states = grown
    return states


def _item_heads(op: Any, argument: Any) -> set[tuple[str, bool]] | None:
    """(head, closed) pairs of one parsed regex item; ``None`` for zero-width items."""
    constants = _sre_constants
    if op is constants.LITERAL:
        return {(chr(argument), False)}
    if op is constants.IN:
        chars: set[str] = set()
        for kind, value in argument:
            if kind is constants.LITERAL:
                chars.add(chr(value))
            elif kind is constants.RANGE and value[1] - value[0] < 40:
                chars.update(chr(code) for code in range(value[0], value[1] + 1))
            else:  # negated class, \w, ...: any character
                return {("", True)}
        return {(char, False) for char in chars}
    if op is constants.BRANCH:
        return set().union(*(_heads(list(branch)) for branch in argument[1]))
    if op is constants.SUBPATTERN:
        return _heads(list(argument[-1]))
    if op in (constants.MAX_REPEAT, constants.MIN_REPEAT):
        low, high, body = argument
        counts = range(min(low, _PREFIX_LENGTH), min(high, _PREFIX_LENGTH) + 1)
        return set().union(*(_heads(list(body) * count) for count in counts))
    if op in (constants.AT, constants.ASSERT, constants.ASSERT_NOT):
        return None
    return {("", True)}  # any other construct: unknown first character


#: Mentions (list 0) and cues (list 1), found in one pass over a clause.
_SCANNER = _Scanner(
    [(pattern, (observations, kind)) for observations, kind, patterns in _MENTIONS for pattern in patterns],
    [(pattern, (kind, direction)) for pattern, kind, direction in (*_CUES, _QUESTION_MARK)],
)


# --------------------------------------------------------------------------------------------------- scope
_CLAUSE_WORDS = (
    r"(?:but|however,?|although|though|whereas|yet|except(?: for)?|with the exception of|aside from|"
    r"apart from|other than|otherwise) |(?=there (?:is|are|has|have|was|were)\b)"
)
# A colon ends a clause unless a bare answer follows it: "Pneumothorax: none.", "Heart size: normal."
_COLON_ANSWER = (
    rf" *(?:{_BARE_NO}|absent|normal|unremarkable|clear|"
    r"(?:none|not) (?:seen|identified|present))(?= *(?:[.,;?!]|$))"
)
# Every branch starts with a literal character, which ``re`` checks before trying the branch.
_CLAUSE_BREAK = re.compile(rf";|:(?!\d)(?!{_COLON_ANSWER})|, (?:{_CLAUSE_WORDS})| (?:{_CLAUSE_WORDS})")
_VERB = re.compile(
    r"\b(?:is|are|was|were|has|have|had|appears?|remains?|persists?|seen|noted|demonstrated|identified|"
    r"present|resolved|improved|worsened|increased|decreased|unchanged|terminates?|projects?|suggests?|"
    r"unlikely|doubtful|improbable|not (?:likely|suspected))\b"  # "opacity, pneumonia unlikely": two clauses
)
_LIST_BEFORE_VERB = re.compile(r"^(?:(?:and|or|nor) |[^,]*?\b(?:or|nor|and)\b)")


def _clauses(sentence: str) -> list[str]:
    """Cut a lower-cased sentence into the clauses that bound a cue's scope (rule 2 of the module doc)."""
    clauses: list[str] = []
    for part in _CLAUSE_BREAK.split(sentence):
        clauses.extend(_split_commas(part))
    return [clause for clause in clauses if clause.strip()]


def _split_commas(part: str) -> list[str]:
    """Split at ", " before a segment with a verb and no list word, and at " and " between two verbs."""
    pieces: list[str] = []
    segments = part.split(", ")
    current = segments[0]
    for segment in segments[1:]:
        rest = segment[4:] if segment.startswith("and ") else segment
        verb = _VERB.search(rest)
        if (
            verb
            and not _LIST_BEFORE_VERB.match(rest[: verb.start()])
            and not segment.startswith(("or ", "nor "))
        ):
            pieces.append(current)
            current = rest
        else:
            current = f"{current}, {segment}"
    pieces.append(current)
    out: list[str] = []
    for piece in pieces:
        chunks = piece.split(" and ")
        current = chunks[0]
        for chunk in chunks[1:]:
            if _VERB.search(current) and _VERB.search(chunk):
                out.append(current)
                current = chunk
            else:
                current = f"{current} and {chunk}"
        out.append(current)
    return out


# -------------------------------------------------------------------------------------------------- values
_PRIORITY = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}


def _clause_mentions(clause: str) -> Iterator[tuple[tuple[str, ...], str, float, str]]:
    """(observations, kind, value, matched text) of every mention in ``clause`` (rules 3-5)."""
    mention_matches, cue_matches = _SCANNER.scan(clause)
    if not mention_matches:
        return
    mentions = [((start, end), *found) for start, end, found in mention_matches]
    cues = _clause_cues(cue_matches, [span for span, _, _ in mentions])
    for index, ((start, end), observations, kind) in enumerate(mentions):
        best: tuple[int, str] | None = None
        for cue_start, cue_end, cue_kind, direction, targets in cues:
            if (cue_kind == NORMAL) != (kind == ANATOMY) or (targets is not None and index not in targets):
                continue
            distances = []
            if direction != POST and cue_start < end:  # cue before (or inside) the mention
                before = max(0, start - cue_end)
                if cue_kind != NORMAL or before <= _NORMAL_BEFORE_MAX:
                    distances.append(before)
            if direction != PRE and cue_start >= end:  # cue after the mention
                distances.append(cue_start - end)
            if distances and (best is None or min(distances) < best[0]):
                best = (min(distances), cue_kind)
        text = clause[start:end]
        if kind == ANATOMY:
            if best is not None:  # normal cue: the structure is normal; otherwise it says nothing
                yield observations, kind, NEGATIVE, text
            continue
        yield observations, kind, POSITIVE if best is None else _VALUE_OF_CUE[best[1]], text


def _clause_cues(
    matches: list[_Match], mention_spans: list[tuple[int, int]]
) -> list[tuple[int, int, str, str, frozenset[int] | None]]:
    """The acting cues among a clause's cue ``matches``, as (start, end, kind, direction, mentions it may reach or None=all).

    Pseudo-cues are dropped; a qualifier ("concerning for") after a negation is part of what is negated
    ("no consolidation concerning for pneumonia"); "versus" and "?" reach only the nearest mention on
    each side ("interstitial abnormality with edema versus infection").
    """
    cues: list[tuple[int, int, str, str, frozenset[int] | None]] = []
    negated_before = False
    for start, end, (kind, direction) in matches:
        if kind == PSEUDO or (kind == QUALIFIER and negated_before):
            continue
        if kind == NEG and direction == PRE:
            negated_before = True
        targets = None
        if direction == BOTH and kind != NORMAL:
            left = [i for i, (_, m_end) in enumerate(mention_spans) if m_end <= start]
            right = [i for i, (m_start, _) in enumerate(mention_spans) if m_start >= end]
            targets = frozenset(left[-1:] + right[:1])
        cues.append((start, end, UNC if kind == QUALIFIER else kind, direction, targets))
    return cues


_VALUE_OF_CUE = {NEG: NEGATIVE, UNC: UNCERTAIN}
_FAILURE = re.compile(r"(?:congestive )?heart failure|chf")


@functools.lru_cache(maxsize=1 << 16)
def _sentence_mentions(sentence: str) -> tuple[tuple[tuple[str, ...], str, float, bool], ...]:
    """(observations, kind, value, is "heart failure"/"CHF") of every mention in a lower-cased sentence.

    Cached: real report collections repeat sentences ("No acute cardiopulmonary process.") very often.
    """
    return tuple(
        (observations, kind, value, _FAILURE.fullmatch(mention) is not None)
        for clause in _clauses(sentence)
        for observations, kind, value, mention in _clause_mentions(clause)
    )


def _label_clean_text(text: str) -> dict[str, LabelValue]:
    """Rules 2-7 of the module docstring on selected, already cleaned report text."""
    labels: dict[str, LabelValue] = dict.fromkeys(CHEXPERT_LABELS)
    if not text.strip():
        return labels
    other_abnormal = False
    heart_failure = False  # a positive or uncertain "heart failure"/"CHF" (CheXpert's Cardiomegaly exception)
    for sentence in split_sentences(text):
        for observations, kind, value, is_failure in _sentence_mentions(sentence.lower()):
            if kind == OTHER:
                other_abnormal = other_abnormal or value != NEGATIVE
                continue
            for name in observations:
                current = labels[name]
                if current is None or _PRIORITY[value] > _PRIORITY[current]:
                    labels[name] = value
            heart_failure = heart_failure or (is_failure and value != NEGATIVE)
    if labels["Cardiomegaly"] is None and heart_failure:
        labels["Cardiomegaly"] = UNCERTAIN
    pathologic = any(
        value in (POSITIVE, UNCERTAIN)
        for name, value in labels.items()
        if name not in ("No Finding", "Support Devices")
    )
    labels["No Finding"] = None if pathologic or other_abnormal else POSITIVE
    return labels


# -------------------------------------------------------------------------------------------------- public
def label_report(text: str) -> dict[str, LabelValue]:
    """CheXpert labels of one report: ``{observation: 1.0 | 0.0 | -1.0 | None}`` in ``CHEXPERT_LABELS`` order.

    Labels "the report", :func:`radlens.data.reports.report_text` (:meth:`ReportSections.text`:
    findings + impression, else the text before the first heading); when that is empty (a report with
    only an INDICATION heading, say), the whole text. See the module docstring for every rule.
    """
    body = report_text(text)  # = parse_report(text).text(): findings + impression, else the preamble
    return _label_clean_text(body if body else clean_text(text))


def label_reports(texts: Iterable[str]) -> list[dict[str, LabelValue]]:
    """:func:`label_report` of each text, in order."""
    return [label_report(text) for text in texts]


def _positives(labels: Mapping[str, LabelValue]) -> frozenset[str]:
    return frozenset(name for name, value in labels.items() if value == POSITIVE)


def identical_label_sets(a: Mapping[str, LabelValue], b: Mapping[str, LabelValue]) -> bool:
    """Whether ``a`` and ``b`` have exactly the same positive observations (value ``== 1``).

    Uncertain, negative and blank all count as "not positive", so ``{"Edema": -1}`` and ``{}`` are
    identical (both have no positives).
    """
    return _positives(a) == _positives(b)


def share_positive(a: Mapping[str, LabelValue], b: Mapping[str, LabelValue]) -> bool:
    """Whether at least one observation is positive (``== 1``) in both ``a`` and ``b``."""
    return not _positives(a).isdisjoint(_positives(b))


def no_positive_in_common(a: Mapping[str, LabelValue], b: Mapping[str, LabelValue]) -> bool:
    """Whether no observation is positive in both: the negation of :func:`share_positive`.

    Two label dicts with no positives at all have none in common (True); -1/None are not positive.
    """
    return not share_positive(a, b)
