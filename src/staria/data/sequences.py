"""A labelled piece as one decoder sequence: its form token, and a section token opening every
section, `[prefix..., <FORM>, <S>, <A_SECTION>, A notes..., <B_SECTION>, ..., <E>]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from staria.data.cache import NO_SECTION
from staria.data.labels import PieceLabels
from staria.tokenizer import SECTION_LETTERS, MusicTokenizerWithStyle


class LabelAlignmentError(ValueError):
    """Labels whose section timeline does not line up with the notes the tokenizer kept."""


@dataclass(frozen=True)
class LabelledSequence:
    """A decoder sequence with section tokens, per-token section ids and `[start, end)` spans."""

    ids: np.ndarray
    section_ids: np.ndarray
    sections: tuple[tuple[str, int, int], ...]


class TokenLayout:
    """Builds labelled sequences from a tokenizer's ids; its per-id lookups (`note_length`,
    `section_id`) are the tokenizer's, taken once."""

    def __init__(self, tokenizer: MusicTokenizerWithStyle) -> None:
        self.tokenizer = tokenizer
        self.note_length = tokenizer.note_length
        self.section_id = tokenizer.section_ids

    def labelled_sequence(
        self, ids: np.ndarray, onset_seconds: np.ndarray, labels: PieceLabels
    ) -> LabelledSequence:
        """`[prefix..., <FORM>, <S>, <A_SECTION>, A notes..., <B_SECTION>, ..., <E>]`.

        Time-shift tokens before a note travel with it, so a section token precedes them.
        Notes outside every labelled section join the section before them.
        """
        tok = self.tokenizer
        bos_at = tok.body_start(ids) - 1
        has_eos = ids[-1] == tok.eos_id
        body = ids[bos_at + 1 : len(ids) - int(has_eos)]
        note_pos = np.flatnonzero(self.note_length[body] > 0)
        if len(note_pos) != len(onset_seconds):
            raise LabelAlignmentError(
                f"{len(note_pos)} note tokens but {len(onset_seconds)} notes with onsets"
            )
        raw = labels.section_of_onsets(onset_seconds)
        inside = np.flatnonzero(raw >= 0)
        if len(inside) == 0:
            raise LabelAlignmentError("no note falls inside any labelled section")
        last_inside = np.maximum.accumulate(np.where(raw >= 0, np.arange(len(raw)), -1))
        occurrence = raw[np.where(last_inside < 0, inside[0], last_inside)]
        opens = np.flatnonzero(np.diff(occurrence, prepend=-1) != 0)
        previous = note_pos[np.maximum(opens - 1, 0)]
        insert_at = np.where(opens == 0, 0, previous + self.note_length[body[previous]])
        letters = [labels.sections[occurrence[note]].letter for note in opens]
        new_body = np.insert(body, insert_at, [self.section_id[letter] for letter in letters])
        head = np.concatenate([ids[:bos_at], [tok.token_to_id[tok.form_token(labels.form)]]])
        head = np.concatenate([head, [tok.bos_id]])
        tail = np.array([tok.eos_id] if has_eos else [], dtype=np.int64)
        sequence = np.concatenate([head, new_body, tail]).astype(np.int64)
        marks = len(head) + insert_at + np.arange(len(insert_at))
        ends = np.append(marks[1:], len(head) + len(new_body))
        section_ids = np.full(len(sequence), NO_SECTION, dtype=np.uint8)
        spans = []
        for letter, mark, end in zip(letters, marks, ends, strict=True):
            section_ids[mark:end] = SECTION_LETTERS.index(letter)
            spans.append((letter, int(mark) + 1, int(end)))
        return LabelledSequence(sequence, section_ids, tuple(spans))
