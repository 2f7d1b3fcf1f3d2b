"""Token ids -> timed notes labelled with the section they fall in, by array indexing alone.

Generated sequences carry their structure only as section tokens, which a MIDI file loses, so
evaluation reads notes from the ids: a note is an `(instrument, pitch, velocity)`, `("onset", ms)`,
`("dur", ms)` triple; each `<T>` before it adds one 5 s segment. Drum hits (no duration) are left
out: the metrics describe pitched material.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from staria.midi_io import FAMILIES, NoteTable
from staria.tokenizer import (
    END,
    FORMS,
    SECTION_LETTERS,
    SEGMENT_MS,
    TIME,
    MusicTokenizerWithStyle,
    Token,
)


class TokenKind(IntEnum):
    OTHER = 0
    NOTE = 1
    ONSET = 2
    DUR = 3
    TIME = 4
    SECTION = 5
    FORM = 6
    END = 7


@dataclass(frozen=True)
class TokenTable:
    """Per-id lookup arrays: `kind[id]`, `value[id]` (pitch, ms or section letter index) and,
    for notes, `family[id]` (index into `FAMILIES`) and `velocity[id]`."""

    kind: np.ndarray
    value: np.ndarray
    family: np.ndarray
    velocity: np.ndarray

    @classmethod
    def from_vocab(cls, vocab: Sequence[Token]) -> TokenTable:
        kind = np.full(len(vocab), TokenKind.OTHER, dtype=np.int8)
        value = np.zeros(len(vocab), dtype=np.int64)
        family = np.zeros(len(vocab), dtype=np.int64)
        velocity = np.zeros(len(vocab), dtype=np.int64)
        sections = {f"<{letter}_SECTION>": i for i, letter in enumerate(SECTION_LETTERS)}
        forms = {f"<{form}>" for form in FORMS}
        for token_id, token in enumerate(vocab):
            if isinstance(token, tuple) and len(token) == 3 and token[0] in FAMILIES:
                kind[token_id], value[token_id] = TokenKind.NOTE, token[1]
                family[token_id], velocity[token_id] = FAMILIES.index(token[0]), token[2]
            elif isinstance(token, tuple) and token[0] in ("onset", "dur"):
                kind[token_id] = TokenKind.ONSET if token[0] == "onset" else TokenKind.DUR
                value[token_id] = token[1]
            elif token == TIME:
                kind[token_id] = TokenKind.TIME
            elif token == END:
                kind[token_id] = TokenKind.END
            elif token in sections:
                kind[token_id], value[token_id] = TokenKind.SECTION, sections[token]
            elif token in forms:
                kind[token_id] = TokenKind.FORM
        return cls(kind, value, family, velocity)

    @classmethod
    def from_tokenizer(cls, tokenizer: MusicTokenizerWithStyle) -> TokenTable:
        return cls.from_vocab(tokenizer.decode(list(range(tokenizer.vocab_size()))))

    def ids_of(self, *kinds: TokenKind) -> np.ndarray:
        """All ids of these kinds, e.g. the form and section tokens a classifier must not see."""
        return np.flatnonzero(np.isin(self.kind, kinds))


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
