"""Token ids -> timed notes labelled with the section they fall in.

Generated sequences carry their structure only as section tokens, which a MIDI file loses, so
evaluation reads notes from the ids with the tokenizer's own decoder (`notes_at`, the one that
writes MIDI) and labels each with the section token before it. Drum hits are left out: the
metrics describe pitched material.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from staria.tokenizer import SECTION_LETTERS, MusicTokenizerWithStyle, TokenKind, TokenTable
from staria.tokenizer.midi_io import DRUM_FAMILY_INDEX, NoteTable


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


@cache
def _tokenizer() -> MusicTokenizerWithStyle:
    return MusicTokenizerWithStyle()


def sectioned_notes(token_ids: Sequence[int] | np.ndarray, table: TokenTable) -> SectionedNotes:
    """Decode ids up to the first `<E>` into pitched notes on a ms clock from the sequence
    start, each with its section; `table` gives the ids' kinds (END, SECTION)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    kind = table.kind[ids]
    ends = np.flatnonzero(kind == TokenKind.END)
    if len(ends):
        ids, kind = ids[: ends[0]], kind[: ends[0]]
    notes, at = _tokenizer().notes_at(ids)
    pitched = notes.family != DRUM_FAMILY_INDEX
    notes, at = notes.select(pitched), at[pitched]
    section = np.cumsum(kind == TokenKind.SECTION) - 1
    letters = tuple(SECTION_LETTERS[i] for i in table.value[ids][kind == TokenKind.SECTION])
    return SectionedNotes(notes, section[at], letters)
