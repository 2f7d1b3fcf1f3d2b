"""Token ids -> timed notes labelled with the section they fall in, by array indexing alone.

Generated sequences carry their structure only as section tokens, which a MIDI file loses, so
evaluation reads notes from the ids: a note is an `(instrument, pitch, velocity)`, `("onset", ms)`,
`("dur", ms)` triple; each `<T>` before it adds one 5 s segment. Drum hits (no duration) are left
out: the metrics describe pitched material.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from staria.tokenizer import SECTION_LETTERS, SEGMENT_MS, TokenKind, TokenTable
from staria.tokenizer.midi_io import NoteTable


@dataclass(frozen=True)
class SectionedNotes:
    """A sequence's notes plus, per note, the index of the section it sits in (-1: before any).

    `letters[i]` is the letter of the i-th section token, so repeats appear as repeated letters.
    """

    notes: NoteTable
    note_section: np.ndarray
    letters: tuple[str, ...]

    @property
    def form(self) -> str:
        return "".join(self.letters)


def sectioned_notes(token_ids: Sequence[int] | np.ndarray, table: TokenTable) -> SectionedNotes:
    """Decode ids up to the first `<E>` into notes on a ms clock starting at the sequence start."""
    ids = np.asarray(token_ids, dtype=np.int64)
    kind = table.kind[ids]
    ends = np.flatnonzero(kind == TokenKind.END)
    if len(ends):
        ids, kind = ids[: ends[0]], kind[: ends[0]]
    value = table.value[ids]
    at = np.flatnonzero(
        (kind[:-2] == TokenKind.NOTE)
        & (kind[1:-1] == TokenKind.ONSET)
        & (kind[2:] == TokenKind.DUR)
    )
    segment = np.cumsum(kind == TokenKind.TIME)
    start = (segment[at] * SEGMENT_MS + value[at + 1]).astype(np.float64)
    notes = NoteTable(
        family=table.family[ids[at]],
        pitch=value[at],
        velocity=table.velocity[ids[at]],
        start_ms=start,
        end_ms=start + value[at + 2],
    )
    section = np.cumsum(kind == TokenKind.SECTION) - 1
    letters = tuple(SECTION_LETTERS[i] for i in value[kind == TokenKind.SECTION])
    return SectionedNotes(notes, section[at], letters)
