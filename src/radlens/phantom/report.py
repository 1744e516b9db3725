"""MIMIC-CXR-style free-text reports and CheXpert-convention labels for RadPhantom studies.

:func:`write_report` writes a report in the layout of MIMIC-CXR's report files (a ``FINAL REPORT``
header, ``EXAMINATION:``, ``INDICATION:`` with ``___`` de-identification blanks, ``TECHNIQUE:``,
``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:``; lines wrapped with a leading space).
:func:`labels_for` gives the labels the text supports, exactly:

- 1 (present): every present finding is stated affirmatively, with its side, zone, size or severity;
  "Lung Opacity" is always named in words ("opacity") when it is present.
- -1 (uncertain): hedged ("Possible ...", "Cannot exclude ...") in a sentence of its own.
- 0 (negated): stated in a negative sentence that negates nothing else ("No pleural effusion or
  pneumothorax."); negations never share a sentence with a positive or uncertain statement.
- blank: the observation's words never appear (the indication and technique use none of them).

Every labelled statement appears in both FINDINGS and IMPRESSION (paraphrased), so a labeler reading
either section, or both, recovers the same labels. Wording is drawn from several paraphrases per
statement with ``np.random.default_rng(spec.seed + 1)``: the same spec always gives the same text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import numpy as np

from radlens.data.schema import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN, LabelValue
from radlens.phantom.spec import Finding, StudySpec

_Rng = np.random.Generator
_GROUP_OF = {
    "Support Devices": "devices",
    "Lung Opacity": "lungs",
    "Consolidation": "lungs",
    "Pneumonia": "lungs",
    "Atelectasis": "lungs",
    "Edema": "lungs",
    "Lung Lesion": "lungs",
    "Pleural Effusion": "pleura",
    "Pneumothorax": "pleura",
    "Pleural Other": "pleura",
    "Cardiomegaly": "heart",
    "Enlarged Cardiomediastinum": "heart",
    "Fracture": "bones",
}
_SIZE = {"small": "small", "moderate": "moderate", "large": "large"}
_DEGREE = {"small": "mild", "moderate": "moderate", "large": "severe"}
_DEGREE_LY = {"small": "mildly", "moderate": "moderately", "large": "markedly"}
_ORDINAL = {3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
_SYMPTOMS = (
    "cough",
    "fever",
    "shortness of breath",
    "chest pain",
    "dyspnea",
    "hypoxia",
    "weakness",
    "tachycardia",
    "cough and fever",
    "dyspnea on exertion",
)
_DEVICE_NAMES = {
    "et_tube": "endotracheal tube",
    "ng_tube": "nasogastric tube",
    "central_line": "central venous catheter",
    "pacemaker": "pacemaker",
    "chest_tube": "chest tube",
}
_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
)


def labels_for(spec: StudySpec) -> dict[str, LabelValue]:
    """CheXpert labels of ``spec`` in ``CHEXPERT_LABELS`` order: 1 present, -1 uncertain, 0 negated, None."""
    labels: dict[str, LabelValue] = dict.fromkeys(CHEXPERT_LABELS)
    for name in spec.negated:
        labels[name] = NEGATIVE
    for finding in spec.findings:
        labels[finding.name] = POSITIVE if finding.certainty == "present" else UNCERTAIN
    return labels


def procedure_for(spec: StudySpec) -> str:
    """The exam name (MIMIC's PerformedProcedureStepDescription) of a single frontal view."""
    return "CHEST (PORTABLE AP)" if spec.anatomy.view == "AP" else "CHEST (SINGLE VIEW)"


def write_report(spec: StudySpec) -> str:
    """The report text of ``spec``: MIMIC-CXR layout, words agreeing with the image and the labels."""
    rng = np.random.default_rng(spec.seed + 1)
    lines = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {procedure_for(spec)}", " "]
    lines += [*_wrap(f"INDICATION:  {_indication(spec, rng)}"), " "]
    if rng.random() < 0.6:
        lines += [f" TECHNIQUE:  {_technique(spec, rng)}", " "]
    comparison = _choice(rng, ("None.", "___.", "Chest radiograph ___.", "___ chest radiograph."))
    lines += [f" COMPARISON:  {comparison}", " "]
    joiner = "  " if rng.random() < 0.3 else " "
    lines += [" FINDINGS:", " ", *_wrap(joiner.join(_findings(spec, rng))), " "]
    lines += [" IMPRESSION:", " ", *_impression_lines(_impression(spec, rng), rng)]
    return "\n".join(lines) + "\n"


def _choice(rng: _Rng, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _wrap(text: str) -> list[str]:
    """Wrap like MIMIC's report files: about 78 columns, every line starting with one space."""
    return textwrap.wrap(text, width=79, initial_indent=" ", subsequent_indent=" ", break_on_hyphens=False)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(word: str) -> str:
    """The indefinite article for ``word`` as spoken ("an 8 mm", "an 18 mm", "a 12 mm", "an opacity")."""
    spoken_vowel = word[:1] in "aeiou" or (word.startswith(("8", "11", "18")) and not word.startswith("1."))
    return "an" if spoken_vowel else "a"


def _indication(spec: StudySpec, rng: _Rng) -> str:
    # Sex is a property of the subject (stable across its studies), age is always de-identified.
    man = spec.subject_id % 2 == 0
    symptom = _choice(rng, _SYMPTOMS)
    forms = (
        f"___-year-old {'man' if man else 'woman'} with {symptom}.",
        f"___{'M' if man else 'F'} with {symptom}  // evaluate for acute process",
        f"___{'M' if man else 'F'} with {symptom}.  Please evaluate.",
        f"___-year-old {'male' if man else 'female'} with {symptom}, evaluate for acute cardiopulmonary process.",
    )
    return _choice(rng, forms)


def _technique(spec: StudySpec, rng: _Rng) -> str:
    if spec.anatomy.view == "AP":
        return _choice(rng, ("Portable AP chest radiograph.", "Single portable AP view of the chest."))
    return _choice(rng, ("Single PA view of the chest.", "Frontal (PA) chest radiograph."))


# --- locations ---------------------------------------------------------------------------------


def _loc_adj(finding: Finding, rng: _Rng) -> str:
    """Adjective form of the finding's place: "right lower lobe", "left apical", "bibasilar"."""
    side, zone = finding.side, finding.zone
    if side == "bilateral":
        options = {
            "upper": ("bilateral upper lobe", "bilateral apical"),
            "middle": ("bilateral mid lung",),
            "lower": ("bibasilar", "bilateral lower lobe"),
        }.get(zone or "", ("bilateral",))
        return _choice(rng, options)
    side = side or "right"
    if zone is None:
        return f"{side}-sided"
    return _choice(
        rng,
        {
            "upper": (f"{side} upper lobe", f"{side} upper lung", f"{side} apical"),
            "middle": (f"{side} mid lung",) + (("right middle lobe",) if side == "right" else ()),
            "lower": (f"{side} lower lobe", f"{side} basilar", f"{side} lower lung"),
        }[zone],
    )


def _loc_in(finding: Finding, rng: _Rng) -> str:
    """Prepositional form of the finding's place: "in the right lower lobe", "at both lung bases"."""
    side, zone = finding.side, finding.zone
    if side == "bilateral":
        options = {
            "upper": ("in both upper lungs", "at both lung apices"),
            "middle": ("in both mid lungs",),
            "lower": ("at both lung bases", "in both lower lobes"),
        }.get(zone or "", ("in both lungs",))
        return _choice(rng, options)
    side = side or "right"
    if zone is None:
        return f"in the {side} lung"
    return _choice(
        rng,
        {
            "upper": (f"in the {side} upper lobe", f"in the {side} upper lung", f"at the {side} lung apex"),
            "middle": (f"in the {side} mid lung",)
            + (("in the right middle lobe",) if side == "right" else ()),
            "lower": (f"in the {side} lower lobe", f"at the {side} lung base", f"in the {side} lower lung"),
        }[zone],
    )


def _side_word(finding: Finding) -> str:
    return finding.side or "right"


# --- present findings --------------------------------------------------------------------------


def _present(finding: Finding, rng: _Rng) -> list[str]:
    """Affirmative sentence(s) stating ``finding`` (several for a set of devices)."""
    if finding.name == "Support Devices":
        return _devices(finding, rng)
    return [_choice(rng, _PRESENT[finding.name](finding, rng))]


def _effusion(f: Finding, rng: _Rng) -> list[str]:
    size = _SIZE[f.severity or "small"]
    if f.side == "bilateral":
        return [
            f"{_cap(size)} bilateral pleural effusions.",
            f"There are {size} bilateral pleural effusions.",
            f"Bilateral pleural effusions are {size}.",
            f"{_cap(size)} bilateral pleural effusions blunt both costophrenic angles.",
        ]
    side = _side_word(f)
    return [
        f"{_cap(size)} {side} pleural effusion.",
        f"There is a {size} {side} pleural effusion.",
        f"The {side} pleural effusion is {size} in size.",
        f"A {size} {side} pleural effusion blunts the {side} costophrenic angle.",
    ]


def _pneumothorax(f: Finding, rng: _Rng) -> list[str]:
    size, side = _SIZE[f.severity or "small"], _side_word(f)
    where = "" if size == "large" else " apical"  # a large one extends down the lateral wall
    return [
        f"{_cap(size)} {side}{where} pneumothorax.",
        f"There is a {size} {side} pneumothorax.",
        f"A {size} {side}-sided pneumothorax is present.",
    ]


def _consolidation(f: Finding, rng: _Rng) -> list[str]:
    degree = {"small": "patchy", "moderate": "confluent", "large": "dense"}[f.severity or "moderate"]
    return [
        f"{_cap(degree)} consolidation {_loc_in(f, rng)}.",
        f"There is {degree} consolidation {_loc_in(f, rng)}.",
        f"{_cap(_loc_adj(f, rng))} consolidation.",
    ]


def _pneumonia(f: Finding, rng: _Rng) -> list[str]:
    if f.side == "bilateral":
        return [
            "Multifocal pneumonia involving both lungs.",
            "Bilateral pneumonia.",
            "Pneumonia in both lungs.",
        ]
    return [
        f"{_cap(_loc_adj(f, rng))} pneumonia.",
        f"Findings of pneumonia {_loc_in(f, rng)}.",
        f"There is pneumonia {_loc_in(f, rng)}.",
    ]


def _atelectasis(f: Finding, rng: _Rng) -> list[str]:
    degree = _DEGREE[f.severity or "small"]
    return [
        f"{_cap(degree)} {_loc_adj(f, rng)} atelectasis.",
        f"There is {degree} atelectasis {_loc_in(f, rng)}.",
        f"{_cap(_loc_adj(f, rng))} atelectasis, {degree} in extent.",
    ]


def _edema(f: Finding, rng: _Rng) -> list[str]:
    degree = _DEGREE[f.severity or "small"]
    return [
        f"{_cap(degree)} pulmonary edema.",
        f"There is {degree} interstitial pulmonary edema.",
        f"Findings of {degree} pulmonary edema.",
        f"{_cap(degree)} pulmonary edema is present.",
    ]


def _lesion(f: Finding, rng: _Rng) -> list[str]:
    size_mm = round(f.size_mm or 15.0)
    if size_mm >= 30:
        size, kind = f"{size_mm / 10:.1f} cm", "mass"
    else:
        size, kind = f"{size_mm} mm", "nodule"
    return [
        f"{_cap(_a(size))} {size} {kind} {_loc_in(f, rng)}.",
        f"{size} {_loc_adj(f, rng)} {kind}.",
        f"There is {_a(size)} {size} {kind} {_loc_in(f, rng)}.",
    ]


def _opacity(f: Finding, rng: _Rng) -> list[str]:
    plural = f.side == "bilateral"
    noun = "opacities" if plural else "opacity"
    if f.zone is None and plural:  # diffuse (edema): perihilar
        return [
            "Bilateral perihilar opacities.",
            "Hazy bilateral perihilar opacities.",
            "There are bilateral perihilar opacities.",
        ]
    described = _choice(rng, ("patchy ", "hazy ", "", "airspace ")) + noun
    there = "There are" if plural else f"There is {_a(described)}"
    return [
        f"{_cap(described)} {_loc_in(f, rng)}.",
        f"{there} {described} {_loc_in(f, rng)}.",
        f"{_cap(_loc_adj(f, rng))} {described}.",
    ]


def _cardiomegaly(f: Finding, rng: _Rng) -> list[str]:
    severity = f.severity or "moderate"
    return [
        f"{_cap(_DEGREE[severity])} cardiomegaly.",
        f"The heart is {_DEGREE_LY[severity]} enlarged.",
        f"There is {_DEGREE[severity]} enlargement of the cardiac silhouette.",
    ]


def _mediastinum(f: Finding, rng: _Rng) -> list[str]:
    severity = f.severity or "moderate"
    return [
        f"The mediastinum is {_DEGREE_LY[severity]} widened.",
        f"{_cap(_DEGREE[severity])} widening of the mediastinum.",
        f"There is {_DEGREE[severity]} widening of the superior mediastinum.",
    ]


def _fracture(f: Finding, rng: _Rng) -> list[str]:
    side, rib = _side_word(f), _ORDINAL.get(f.rib or 6, "sixth")
    return [
        f"Fracture of the {side} posterior {rib} rib.",
        f"{_cap(side)} posterior {rib} rib fracture.",
        f"There is an acute fracture of the {side} {rib} posterior rib.",
    ]


def _pleural_other(f: Finding, rng: _Rng) -> list[str]:
    where = "apical" if f.zone == "upper" else "basilar"
    side = _side_word(f)
    return [
        f"{_cap(side)} {where} pleural thickening.",
        f"There is {side} {where} pleural thickening.",
        f"Pleural thickening is present at the {side} {'apex' if where == 'apical' else 'base'}."
        if side != "bilateral"
        else f"Pleural thickening is present at both lung {'apices' if where == 'apical' else 'bases'}.",
    ]


_PRESENT: dict[str, Callable[[Finding, _Rng], list[str]]] = {
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
    "Pneumonia": _pneumonia,
    "Atelectasis": _atelectasis,
    "Edema": _edema,
    "Lung Lesion": _lesion,
    "Lung Opacity": _opacity,
    "Cardiomegaly": _cardiomegaly,
    "Enlarged Cardiomediastinum": _mediastinum,
    "Fracture": _fracture,
    "Pleural Other": _pleural_other,
}


def _devices(f: Finding, rng: _Rng) -> list[str]:
    """One sentence per device, placed where the renderer draws it (``side``: the chest tube's)."""
    side = _side_word(f)
    cm = int(rng.integers(3, 7))
    sentences = {
        "et_tube": (
            f"Endotracheal tube tip terminates {cm} cm above the carina.",
            f"An endotracheal tube is in standard position, {cm} cm above the carina.",
            "The endotracheal tube is appropriately positioned above the carina.",
        ),
        "ng_tube": (
            "A nasogastric tube courses below the diaphragm with the tip in the stomach.",
            "Nasogastric tube tip projects over the stomach.",
            "The enteric tube terminates in the stomach.",
        ),
        "central_line": (
            "Right subclavian central venous catheter tip in the mid SVC.",
            "A right subclavian central line terminates in the SVC.",
            "Right-sided central venous catheter with the tip in the superior vena cava.",
        ),
        "pacemaker": (
            "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
            "A left-sided pacemaker is in place with leads terminating in the right ventricle.",
            "Dual-lead left chest wall pacemaker device in place.",
        ),
        "chest_tube": (
            f"{_cap(side)} chest tube in place.",
            f"A {side} chest tube terminates near the {side} lung apex.",
            f"There is a {side}-sided chest tube.",
        ),
    }
    return [_choice(rng, sentences[kind]) for kind in f.devices]


# --- uncertain findings ------------------------------------------------------------------------


def _uncertain(f: Finding, rng: _Rng) -> str:
    """A hedged sentence for a finding that is not drawn: "Possible ...", "Cannot exclude ..."."""
    name, side = f.name, _side_word(f)
    size = _SIZE[f.severity or "small"]
    degree = _DEGREE[f.severity or "small"]
    options: tuple[str, ...]
    if name == "Pleural Effusion":
        what = "bilateral pleural effusions" if side == "bilateral" else f"{side} pleural effusion"
        options = (
            f"Possible {size} {what}.",
            f"Cannot exclude {size} {what}.",
            f"There may be {size} {what}.",
        )
    elif name == "Pneumothorax":
        options = (
            f"Possible {size} {side} apical pneumothorax.",
            f"Cannot exclude a {size} {side} pneumothorax.",
            f"There may be a {size} {side} pneumothorax.",
        )
    elif name == "Pneumonia":
        options = (
            "Cannot exclude early pneumonia.",
            f"Possible early pneumonia {_loc_in(f, rng)}.",
            "Early pneumonia cannot be excluded.",
        )
    elif name == "Consolidation":
        options = (
            f"Possible consolidation {_loc_in(f, rng)}.",
            f"Cannot exclude consolidation {_loc_in(f, rng)}.",
        )
    elif name == "Atelectasis":
        options = (
            f"Possible {degree} {_loc_adj(f, rng)} atelectasis.",
            f"Cannot exclude {_loc_adj(f, rng)} atelectasis.",
            f"There may be {degree} atelectasis {_loc_in(f, rng)}.",
        )
    elif name == "Edema":
        options = (
            f"Possible {degree} pulmonary edema.",
            f"Cannot exclude {degree} pulmonary edema.",
            f"{_cap(degree)} pulmonary edema may be present.",
        )
    elif name == "Lung Lesion":
        options = (
            f"Possible nodule {_loc_in(f, rng)}.",
            f"Cannot exclude a nodule {_loc_in(f, rng)}.",
            f"There may be a small nodule {_loc_in(f, rng)}.",
        )
    elif name == "Lung Opacity":
        options = (
            f"Possible subtle opacity {_loc_in(f, rng)}.",
            f"Cannot exclude a subtle opacity {_loc_in(f, rng)}.",
            f"There may be a subtle opacity {_loc_in(f, rng)}.",
        )
    elif name == "Cardiomegaly":
        options = (
            "Possible mild cardiomegaly.",
            "Cannot exclude mild cardiomegaly.",
            "The heart may be mildly enlarged.",
        )
    elif name == "Enlarged Cardiomediastinum":
        options = (
            "Possible widening of the mediastinum.",
            "Cannot exclude widening of the mediastinum.",
            "The mediastinum may be widened.",
        )
    elif name == "Fracture":
        rib = _ORDINAL.get(f.rib or 6, "sixth")
        options = (
            f"Possible fracture of the {side} posterior {rib} rib.",
            f"Cannot exclude a {side} rib fracture.",
            f"There may be a fracture of the {side} {rib} rib.",
        )
    else:  # Pleural Other
        options = (
            f"Possible {side} pleural thickening.",
            f"Cannot exclude {side} pleural thickening.",
            f"There may be {side} pleural thickening.",
        )
    return _choice(rng, options)


# --- negations ---------------------------------------------------------------------------------

#: Noun phrases that can share one negative sentence ("No pleural effusion or pneumothorax.").
_NEG_NOUN = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "focal consolidation",
    "Edema": "pulmonary edema",
    "Fracture": "displaced rib fracture",
    "Lung Lesion": "suspicious pulmonary nodule",
    "Lung Opacity": "focal opacity",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": "pleural thickening",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}
#: Sentences that negate one observation on their own.
_NEG_ALONE: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("No atelectasis.", "There is no atelectasis.", "No evidence of atelectasis."),
    "Cardiomegaly": ("Heart size is normal.", "No cardiomegaly.", "The heart is not enlarged."),
    "Consolidation": (
        "No focal consolidation.",
        "There is no focal consolidation.",
        "No consolidation is seen.",
    ),
    "Edema": ("No pulmonary edema.", "There is no pulmonary edema.", "No evidence of pulmonary edema."),
    "Enlarged Cardiomediastinum": (
        "The mediastinum is not widened.",
        "Mediastinal contours are normal.",
        "No widening of the mediastinum.",
    ),
    "Fracture": ("No displaced rib fracture.", "No acute rib fracture is seen.", "There is no rib fracture."),
    "Lung Lesion": (
        "No suspicious pulmonary nodule.",
        "No pulmonary nodule or mass.",
        "There is no lung mass.",
    ),
    "Lung Opacity": ("No focal opacity.", "There is no focal opacity.", "No focal airspace opacity."),
    "Pleural Effusion": (
        "No pleural effusion.",
        "There is no pleural effusion.",
        "No evidence of pleural effusion.",
    ),
    "Pleural Other": (
        "No pleural thickening.",
        "There is no pleural thickening.",
        "No pleural thickening is seen.",
    ),
    "Pneumonia": ("No pneumonia.", "No evidence of pneumonia.", "There is no pneumonia."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
    "Support Devices": ("No lines or tubes.", "No support devices are seen.", "There are no lines or tubes."),
}


def _negations(negated: tuple[str, ...], rng: _Rng) -> list[tuple[str, str]]:
    """(first negated name, sentence) pairs covering every name in ``negated`` exactly once."""
    names = list(negated)
    sentences: list[tuple[str, str]] = []
    if "Cardiomegaly" in names and "Enlarged Cardiomediastinum" in names and rng.random() < 0.5:
        names.remove("Cardiomegaly")
        names.remove("Enlarged Cardiomediastinum")
        sentences.append(("Cardiomegaly", "Heart size and mediastinal contours are normal."))
    groupable = [name for name in names if name in _NEG_NOUN]
    alone = [name for name in names if name not in _NEG_NOUN]
    order = rng.permutation(len(groupable))
    groupable = [groupable[i] for i in order]
    while groupable:
        size = min(len(groupable), int(rng.integers(1, 4)))
        group, groupable = groupable[:size], groupable[size:]
        if size == 1:
            alone.append(group[0])
            continue
        nouns = [_NEG_NOUN[name] for name in group]
        listed = ", ".join(nouns[:-1]) + " or " + nouns[-1]
        form = _choice(rng, ("No {}.", "There is no {}.", "No evidence of {}."))
        sentences.append((group[0], form.format(listed)))
    sentences += [(name, _choice(rng, _NEG_ALONE[name])) for name in alone]
    return sentences


# --- sections ----------------------------------------------------------------------------------


def _neutral(spec: StudySpec, rng: _Rng) -> list[tuple[str, str]]:
    """Statements about technique that name no observation but agree with the image."""
    anatomy = spec.anatomy
    out: list[tuple[str, str]] = []
    if abs(anatomy.rotation_deg) > 3.0:
        out.append(("technique", _choice(rng, ("The patient is slightly rotated.", "Patient is rotated."))))
    if anatomy.inspiration < 0.3:
        out.append(("lungs", _choice(rng, ("Lung volumes are low.", "Low lung volumes."))))
    elif anatomy.inspiration > 0.8:
        out.append(("lungs", _choice(rng, ("Lung volumes are normal.", "Normal lung volumes."))))
    return out


def _findings(spec: StudySpec, rng: _Rng) -> list[str]:
    """The FINDINGS sentences: devices, lungs, pleura, heart, bones (the heart sometimes first)."""
    grouped: dict[str, list[str]] = {}
    for finding in spec.findings:
        if finding.name == "No Finding":
            continue
        group = _GROUP_OF[finding.name]
        if finding.certainty == "present":
            grouped.setdefault(group, []).extend(_present(finding, rng))
        else:
            grouped.setdefault(group, []).append(_uncertain(finding, rng))
    for name, sentence in _negations(spec.negated, rng):
        grouped.setdefault(_GROUP_OF[name], []).append(sentence)
    for group, sentence in _neutral(spec, rng):
        grouped.setdefault(group, []).append(sentence)
    order = ["technique", "devices", "lungs", "pleura", "heart", "bones"]
    if rng.random() < 0.35:
        order.remove("heart")
        order.insert(1, "heart")
    sentences: list[str] = []
    for group in order:
        items = grouped.get(group, [])
        sentences += [items[i] for i in rng.permutation(len(items))]
    if not sentences:  # nothing labelled and nothing notable: still a findings section
        sentences.append(_choice(rng, ("Frontal view of the chest was obtained.", "Single frontal view.")))
    return sentences


def _impression(spec: StudySpec, rng: _Rng) -> list[str]:
    """IMPRESSION items: the normal statement or the positives, the hedges, then the negatives."""
    items: list[str] = []
    if spec.has("No Finding"):
        items.append(_choice(rng, _NORMAL_IMPRESSIONS))
    present = [f for f in spec.present() if f.name not in ("No Finding", "Support Devices")]
    items += [sentence for finding in present for sentence in _present(finding, rng)]
    devices = next((f for f in spec.present() if f.name == "Support Devices"), None)
    if devices is not None:
        names = [_DEVICE_NAMES[kind] for kind in devices.devices]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        options = (
            f"{_cap(listed)} in place.",
            f"{_cap(listed)} in standard position.",
            "Support devices as described.",
        )
        items.append(_choice(rng, options))
    items += [_uncertain(f, rng) for f in spec.findings if f.certainty == "uncertain"]
    items += [sentence for _, sentence in _negations(spec.negated, rng)]
    return items


def _impression_lines(items: list[str], rng: _Rng) -> list[str]:
    """A numbered list (as MIMIC radiologists often write) or one wrapped paragraph."""
    if len(items) >= 2 and rng.random() < 0.35:
        lines: list[str] = []
        for number, item in enumerate(items, start=1):
            lines += textwrap.wrap(
                f"{number}. {item}",
                width=79,
                initial_indent=" ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        return lines
    return _wrap(" ".join(items))
