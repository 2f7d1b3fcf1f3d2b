"""Note-level copy fidelity: how exactly a returning section replays its letter's first
occurrence, in notes rather than tokens (a return starts later, so its onset tokens differ).

A section's notes are read as (pitch, onset from the section's first note, on the 10 ms grid)
pairs; a return is compared with its letter's first occurrence over the span both cover (the
shorter of the two), and scores the F1 of the two multisets: 1 for an exact replay at any
time shift (the same pitches), 0 for no shared note. Chance pairs a return with the first
occurrence of a letter of another piece; the ceiling is the held-out pieces' own returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from staria.evaluation.notes import SectionedNotes
from staria.statistics import mean_interval
from staria.tokenizer import TIME_STEP_MS


def _section_notes(piece: SectionedNotes, index: int) -> tuple[Counter, float]:
    """(pitch, relative onset) counts of one section, and its span in ms (0: no notes)."""
    here = piece.note_section == index
    starts, ends, pitches = (
        piece.notes.start_ms[here],
        piece.notes.end_ms[here],
        piece.notes.pitch[here],
    )
    if not len(starts):
        return Counter(), 0.0
    relative = np.round((starts - starts.min()) / TIME_STEP_MS).astype(int)
    return Counter(zip(pitches.tolist(), relative.tolist(), strict=True)), float(
        ends.max() - starts.min()
    )


def _f1(first: tuple[Counter, float], other: tuple[Counter, float]) -> float | None:
    """F1 of two sections' notes within the span both cover; None when either has none."""
    span = min(first[1], other[1])
    if span <= 0:
        return None
    limit = span / TIME_STEP_MS
    a = Counter({note: n for note, n in first[0].items() if note[1] <= limit})
    b = Counter({note: n for note, n in other[0].items() if note[1] <= limit})
    total = sum(a.values()) + sum(b.values())
    return 2 * sum((a & b).values()) / total if total else None


def return_fidelities(piece: SectionedNotes) -> list[float]:
    """F1 of every returning section (a letter's later occurrence) against its first one."""
    first: dict[str, int] = {}
    scores = []
    for index, letter in enumerate(piece.letters):
        if letter in first:
            score = _f1(_section_notes(piece, first[letter]), _section_notes(piece, index))
            if score is not None:
                scores.append(score)
        else:
            first[letter] = index
    return scores


def chance_fidelities_per_piece(pieces: Sequence[SectionedNotes]) -> list[list[float]]:
    """Each piece's returns scored against the same letter's first occurrence in the next piece
    (cyclically): material that merely shares the style; one list per piece."""
    scores = []
    for position, piece in enumerate(pieces):
        other = pieces[(position + 1) % len(pieces)]
        others = {letter: i for i, letter in reversed(list(enumerate(other.letters)))}
        seen, own = set(), []
        for index, letter in enumerate(piece.letters):
            if letter in seen and letter in others and other is not piece:
                score = _f1(_section_notes(other, others[letter]), _section_notes(piece, index))
                if score is not None:
                    own.append(score)
            seen.add(letter)
        scores.append(own)
    return scores


def chance_fidelities(pieces: Sequence[SectionedNotes]) -> list[float]:
    """`chance_fidelities_per_piece`, every piece's scores in one list."""
    return [score for own in chance_fidelities_per_piece(pieces) for score in own]


def copy_fidelity_metrics(
    samples: Sequence[SectionedNotes], reference: Sequence[SectionedNotes]
) -> dict:
    """Samples' mean return fidelity with its interval, beside the reference pieces' own
    (ceiling) and across reference pieces (chance), each with its count of returns."""
    result = {}
    for name, scores in (
        ("samples", [s for piece in samples for s in return_fidelities(piece)]),
        ("ceiling", [s for piece in reference for s in return_fidelities(piece)]),
        ("chance", chance_fidelities(reference)),
    ):
        mean, interval = mean_interval(scores)
        result[name] = {"mean": mean, "interval": interval, "returns": len(scores)}
    return result
