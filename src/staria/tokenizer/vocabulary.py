"""The vocabulary: every token, its id, and the per-id tables the rest of Staria reads.

Ids 0..17,726 are aria-utils' `AbsTokenizer` default vocabulary in its order (special tokens,
instrument/composer/form/genre prefixes, (instrument, pitch, velocity) notes, drums, durations,
onsets), so Aria's checkpoints and datasets load unchanged; Staria's 15 tokens follow: the
section tokens A-D, the prompt markers and the 9 form tokens. `TokenTable` gives each id's
kind and value as arrays, for code that reads ids in bulk (evaluation, classifiers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from staria.tokenizer.midi_io import DRUM, FAMILIES, PITCHED_FAMILIES

if TYPE_CHECKING:
    from staria.tokenizer.codec import MusicTokenizerWithStyle

Token = str | tuple


START, END, PAD, UNKNOWN, DIM, TIME = "<S>", "<E>", "<P>", "<U>", "<D>", "<T>"
SPECIAL_TOKENS = (START, END, PAD, UNKNOWN, DIM, TIME)
COMPOSERS = (
    "bach", "beethoven", "mozart", "chopin", "rachmaninoff", "liszt",
    "debussy", "schubert", "brahms", "ravel", "satie", "scarlatti",
)  # fmt: skip
PIECE_FORMS = ("sonata", "prelude", "nocturne", "étude", "waltz", "mazurka", "impromptu", "fugue")
GENRES = ("jazz", "classical")
SECTION_LETTERS = ("A", "B", "C", "D")
FORMS = ("A", "AB", "ABC", "ABA", "ABAB", "ABAC", "ABCA", "ABCB", "ABCD")
PROMPT_START, PROMPT_END = "<PROMPT_START>", "<PROMPT_END>"


def section_token(letter: str) -> str:
    """`<A_SECTION>` for "A"; `ValueError` for a letter outside `SECTION_LETTERS`."""
    if letter not in SECTION_LETTERS:
        raise ValueError(f"section letter {letter!r} is not one of {SECTION_LETTERS}")
    return f"<{letter}_SECTION>"


def form_token(form: str) -> str:
    """`<ABA>` for "ABA"; `ValueError` for a form outside `FORMS`."""
    if form not in FORMS:
        raise ValueError(f"form {form!r} is not one of {FORMS}")
    return f"<{form}>"


# The 15 tokens Staria adds after Aria's vocabulary, in id order.
STARIA_TOKENS = (
    *map(section_token, SECTION_LETTERS),
    PROMPT_START,
    PROMPT_END,
    *map(form_token, FORMS),
)

TIME_STEP_MS = 10
SEGMENT_MS = 5000
MAX_DUR_MS = 5000
VELOCITY_STEP = 10
MAX_VELOCITY = 120
DRUM_PITCHES = range(35, 82)


def build_vocabulary() -> tuple[Token, ...]:
    """All tokens in id order: Aria's `AbsTokenizer` default vocabulary, then Staria's tokens."""
    prefixes = [
        *(("prefix", "instrument", family) for family in FAMILIES),
        *(("prefix", "composer", composer) for composer in COMPOSERS),
        *(("prefix", "form", form) for form in PIECE_FORMS),
        *(("prefix", "genre", genre) for genre in GENRES),
    ]
    velocities = range(0, MAX_VELOCITY + 1, VELOCITY_STEP)
    notes = [(family, p, v) for family in PITCHED_FAMILIES for p in range(128) for v in velocities]
    return (
        *SPECIAL_TOKENS,
        *prefixes,
        *notes,
        *((DRUM, pitch) for pitch in DRUM_PITCHES),
        *(("dur", ms) for ms in range(0, MAX_DUR_MS + 1, TIME_STEP_MS)),
        *(("onset", ms) for ms in range(0, SEGMENT_MS, TIME_STEP_MS)),
        *STARIA_TOKENS,
    )


VOCAB_SIZE: int = len(build_vocabulary())
"""17,742: Aria's 17,727 ids and Staria's 15; every network's default `num_tokens`."""
UNKNOWN_ID: int = SPECIAL_TOKENS.index(UNKNOWN)
"""3: `<U>`, what an id outside a compact vocabulary reads as."""


@dataclass(frozen=True)
class VocabularyIds:
    """Every id and id range the codec and the rest of Staria compute with.

    Contiguous ranges, each `[base, next base)`: instrument prefixes from `prefix_base`,
    pitched notes (family, pitch, velocity) from `note_base`, drums from `drum_base`,
    durations from `dur_base`, onsets from `onset_base` (`onset_count` of them).
    """

    vocab: tuple[Token, ...]  # `build_vocabulary()`: the token of each id
    token_to_id: Mapping[Token, int]
    pad: int
    bos: int
    eos: int
    dim: int
    time: int
    unknown: int
    prefix_base: int
    note_base: int
    drum_base: int
    dur_base: int
    onset_base: int
    onset_count: int
    section_ids: Mapping[str, int]  # {"A": id of <A_SECTION>, ...}
    # the section and form tokens: the structure a classifier must not be shown
    structure_ids: tuple[int, ...]
    staria_ids: tuple[int, ...]  # STARIA_TOKENS' ids, the last 15

    def __reduce__(self) -> tuple:
        """Pickled as the call that builds it (its mappings are read-only views, which do
        not pickle): a tokenizer crosses to DataLoader and index workers by reference."""
        return vocabulary_ids, ()

    def note_length(self, vocab_size: int) -> np.ndarray:
        """Tokens per note that starts at each id [vocab_size] (int64): 3 for a pitched note
        (note, onset, dur), 2 for a drum hit (drum, onset), 0 for an id that starts no note."""
        length = np.zeros(vocab_size, dtype=np.int64)
        length[self.note_base : self.drum_base] = 3
        length[self.drum_base : self.dur_base] = 2
        return length


@cache
def vocabulary_ids() -> VocabularyIds:
    """The ids of `build_vocabulary()`, computed once per process (read-only afterwards)."""
    vocab = build_vocabulary()
    token_to_id = {token: i for i, token in enumerate(vocab)}
    ids = token_to_id.__getitem__
    sections = tuple(ids(section_token(letter)) for letter in SECTION_LETTERS)
    forms = tuple(ids(form_token(form)) for form in FORMS)
    return VocabularyIds(
        vocab=vocab,
        token_to_id=MappingProxyType(token_to_id),
        pad=ids(PAD),
        bos=ids(START),
        eos=ids(END),
        dim=ids(DIM),
        time=ids(TIME),
        unknown=ids(UNKNOWN),
        prefix_base=ids(("prefix", "instrument", FAMILIES[0])),
        note_base=ids((FAMILIES[0], 0, 0)),
        drum_base=ids((DRUM, DRUM_PITCHES[0])),
        dur_base=ids(("dur", 0)),
        onset_base=ids(("onset", 0)),
        onset_count=SEGMENT_MS // TIME_STEP_MS,
        section_ids=MappingProxyType(dict(zip(SECTION_LETTERS, sections, strict=True))),
        structure_ids=sections + forms,
        staria_ids=tuple(ids(token) for token in STARIA_TOKENS),
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
        sections = {section_token(letter): i for i, letter in enumerate(SECTION_LETTERS)}
        forms = {form_token(form) for form in FORMS}
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
