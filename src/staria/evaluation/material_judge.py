"""The material judge: the form a piece's sections spell by what they play, not by their tokens.

Each section is summarised by its material profile (`structure_metrics.section_profile`:
pitch-class, interval, inter-onset and duration histograms). Going through the sections in
order, a section takes the letter of the most similar earlier letter's first occurrence when
their cosine similarity reaches `threshold`, else the next new letter; the letters spell the
judged form (A, AB, ABA, ...). `fit_threshold` chooses the threshold on labelled pieces other
than those judged (training pieces; the comparison uses val pieces); the
judge's accuracy on held-out pieces is its ceiling, the same judge against forms shuffled among
those pieces its chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from staria.evaluation.notes import SectionedNotes
from staria.evaluation.structure_metrics import section_profiles
from staria.statistics import wilson_interval
from staria.tokenizer import SECTION_LETTERS


@dataclass(frozen=True)
class JudgedForm:
    """The judged form and, per section, the judged letter (sections without notes: '-')."""

    form: str
    letters: tuple[str, ...]


def judge_form(piece: SectionedNotes, threshold: float) -> JudgedForm:
    """The letters `piece`'s sections' material spells (see the module docstring)."""
    firsts: list[np.ndarray] = []  # first occurrence profile of each judged letter
    letters = []
    for profile in section_profiles(piece):
        norm = np.linalg.norm(profile)
        if norm == 0:
            letters.append("-")
            continue
        unit = profile / norm
        similarity = [float(unit @ first) for first in firsts]
        best = int(np.argmax(similarity)) if similarity else -1
        if best >= 0 and similarity[best] >= threshold:
            letters.append(SECTION_LETTERS[best])
        elif len(firsts) < len(SECTION_LETTERS):
            firsts.append(unit)
            letters.append(SECTION_LETTERS[len(firsts) - 1])
        else:  # a fifth kind of material: the nearest of the four
            letters.append(SECTION_LETTERS[best])
    return JudgedForm("".join(letter for letter in letters if letter != "-"), tuple(letters))


def form_accuracy(
    pieces: Sequence[SectionedNotes], forms: Sequence[str], threshold: float
) -> float:
    """Fraction of `pieces` whose judged form is the given form."""
    hits = [
        judge_form(piece, threshold).form == form for piece, form in zip(pieces, forms, strict=True)
    ]
    return float(np.mean(hits)) if hits else float("nan")


def fit_threshold(pieces: Sequence[SectionedNotes]) -> float:
    """The threshold (0.50 to 0.99 by 0.01) at which the judge best recovers the training
    pieces' own forms (their section tokens); the lowest of equally good ones."""
    grid = np.round(np.arange(0.5, 1.0, 0.01), 2)
    forms = [piece.form for piece in pieces]
    scores = [form_accuracy(pieces, forms, float(threshold)) for threshold in grid]
    return float(grid[int(np.argmax(scores))])


def letter_accuracy(piece: SectionedNotes, threshold: float) -> float:
    """Fraction of `piece`'s sections whose judged letter is its section token's letter."""
    judged = judge_form(piece, threshold).letters
    if not judged:
        return float("nan")
    return float(np.mean([a == b for a, b in zip(judged, piece.letters, strict=True)]))


def shuffled_forms(forms: Sequence[str], seed: int = 0) -> list[str]:
    """`forms` in a seeded random order: the chance level's labels."""
    order = np.random.default_rng(seed).permutation(len(forms))
    return [forms[i] for i in order]


def material_judge_metrics(
    samples: Sequence[SectionedNotes],
    requested: Sequence[str | None],
    reference: Sequence[SectionedNotes],
) -> dict | None:
    """The judge on generated samples with its ceiling and chance, from labelled reference
    pieces: the threshold is fitted on the even-numbered ones, the ceiling (judged form =
    the piece's own) and chance (against shuffled forms) measured on the odd-numbered ones.
    Samples score `form_match` (judged form = the form they were asked for, where one was)
    and `letter_accuracy` (judged letter = the sample's own section token, over sections);
    None without at least two labelled reference pieces."""
    if len(reference) < 2:
        return None
    threshold = fit_threshold(reference[::2])
    held_out = reference[1::2]
    forms = [piece.form for piece in held_out]
    asked = [(piece, form) for piece, form in zip(samples, requested, strict=True) if form]
    matches = [judge_form(piece, threshold).form == form for piece, form in asked]
    letters = [
        judged == own
        for piece in samples
        for judged, own in zip(judge_form(piece, threshold).letters, piece.letters, strict=True)
    ]
    return {
        "threshold": threshold,
        "form_match": float(np.mean(matches)) if matches else None,
        "form_match_interval": wilson_interval(int(np.sum(matches)), len(matches)),
        "letter_accuracy": float(np.mean(letters)) if letters else None,
        "letter_accuracy_interval": wilson_interval(int(np.sum(letters)), len(letters)),
        "ceiling": form_accuracy(held_out, forms, threshold),
        "chance": form_accuracy(held_out, shuffled_forms(forms), threshold),
        "reference_pieces": len(held_out),
    }
