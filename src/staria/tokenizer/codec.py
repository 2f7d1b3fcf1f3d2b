"""MusicTokenizerWithStyle: Aria-compatible tokens <-> ids <-> MIDI, plus token-level augmentation.

The ids are `staria.tokenizer.vocabulary`'s. Tokenization works on whole arrays of notes (see
`staria.tokenizer.midi_io`), never note by note.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from staria.tokenizer.midi_io import (
    DRUM_FAMILY_INDEX,
    AriaNotes,
    MidiReadError,
    MidiSource,
    NoteTable,
    notes_to_midi_bytes,
    read_notes,
    source_name,
)
from staria.tokenizer.vocabulary import (
    DRUM_PITCHES,
    MAX_DUR_MS,
    MAX_VELOCITY,
    PROMPT_END,
    PROMPT_START,
    SEGMENT_MS,
    TIME_STEP_MS,
    VELOCITY_STEP,
    Token,
    form_token,
    section_token,
    vocabulary_ids,
)

DIM_TOKEN_OFFSET = 100
DRUM_NOTE_MS = 100  # drum tokens carry no duration; hits are written this long


@dataclass(frozen=True)
class PieceLimits:
    """Bounds on one tokenized piece, checked before its token array is allocated.

    The longest real piece of the shared test set (Maestro) lasts 39 min and gives 61,682
    tokens; the defaults are about 6x and 16x that. A piece over a bound raises
    `MidiReadError`, or with `crop` keeps its notes up to the bound (`fit_to_limits` says what
    was cut). `max_duration_s` counts from the first note's onset to the last one's.
    """

    max_duration_s: float = 4 * 3600.0
    max_tokens: int = 1_000_000
    crop: bool = False

    def __post_init__(self) -> None:
        if not (self.max_duration_s > 0 and self.max_tokens > 0):
            raise ValueError(f"piece limits must be positive, got {self}")


def nearest_on_grid_table(max_value: int, grid: range) -> np.ndarray:
    """`table[v]` is the grid value Aria snaps integer `v` to.

    Aria finds the nearest grid value by a binary search that keeps the first strictly closer
    candidate it visits, so ties go up or down depending on the search path (15 -> 20 but
    25 -> 20); a lookup table reproduces that exactly and vectorises snapping.
    """
    table = np.empty(max_value + 1, dtype=np.int64)
    for value in range(max_value + 1):
        low, high, best = 0, len(grid) - 1, None
        while low <= high:
            middle = (low + high) // 2
            if best is None or abs(grid[middle] - value) < abs(best - value):
                best = grid[middle]
            if grid[middle] == value:
                break
            low, high = (middle + 1, high) if grid[middle] < value else (low, middle - 1)
        table[value] = best
    return table


class MusicTokenizerWithStyle:
    """Aria's absolute-time MIDI tokenizer with Staria's section, prompt and form tokens."""

    def __init__(self, limits: PieceLimits = PieceLimits()) -> None:
        self.limits = limits
        self.vocabulary_ids = ids = vocabulary_ids()
        self.vocab: tuple[Token, ...] = ids.vocab
        self.token_to_id: dict[Token, int] = dict(ids.token_to_id)  # a dict: encode's hot path
        self.pad_id, self.bos_id, self.eos_id = ids.pad, ids.bos, ids.eos
        self.dim_id, self.time_id, self.unknown_id = ids.dim, ids.time, ids.unknown
        self.prompt_start = PROMPT_START
        self.prompt_end = PROMPT_END
        self._prefix_base, self._note_base = ids.prefix_base, ids.note_base
        self._drum_base, self._dur_base = ids.drum_base, ids.dur_base
        self._onset_base = ids.onset_base
        self._velocity_levels = MAX_VELOCITY // VELOCITY_STEP + 1
        velocity_grid = range(0, MAX_VELOCITY + 1, VELOCITY_STEP)
        self._velocity_table = np.maximum(nearest_on_grid_table(127, velocity_grid), VELOCITY_STEP)
        self._onset_table = nearest_on_grid_table(
            SEGMENT_MS - 1, range(0, SEGMENT_MS, TIME_STEP_MS)
        )
        self._dur_table = np.maximum(
            nearest_on_grid_table(MAX_DUR_MS, range(0, MAX_DUR_MS + 1, TIME_STEP_MS)), TIME_STEP_MS
        )

    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, tokens: list[Token]) -> list[int]:
        """Token ids; tokens outside the vocabulary become `<U>`."""
        return [self.token_to_id.get(token, self.unknown_id) for token in tokens]

    def decode(self, ids: list[int]) -> list[Token]:
        return [self.vocab[i] for i in ids]

    def section_token(self, letter: str) -> str:
        return section_token(letter)

    def form_token(self, form: str) -> str:
        return form_token(form)

    def body_start(self, ids: np.ndarray) -> int:
        """Index just after the first `<S>` of `ids`: the instrument prefix (and a form token)
        come before it, the piece's body after; `ValueError` when `ids` holds no `<S>`."""
        starts = np.flatnonzero(np.asarray(ids) == self.bos_id)
        if len(starts) == 0:
            raise ValueError("token ids hold no <S>: not a piece sequence")
        return int(starts[0]) + 1

    @property
    def section_ids(self) -> dict[str, int]:
        """The id of each section letter's token: {"A": id of `<A_SECTION>`, ...}."""
        return dict(self.vocabulary_ids.section_ids)

    @property
    def note_length(self) -> np.ndarray:
        """Tokens per note that starts at each id [V] (`VocabularyIds.note_length`)."""
        return self.vocabulary_ids.note_length(self.vocab_size())

    @property
    def structure_token_ids(self) -> tuple[int, ...]:
        """Ids of the section and form tokens: the structure a classifier must not be shown."""
        return self.vocabulary_ids.structure_ids

    @property
    def staria_token_ids(self) -> tuple[int, ...]:
        """Ids of the 15 tokens Staria adds after Aria's vocabulary (`STARIA_TOKENS`): sections
        A-D, the prompt markers and the 9 forms, in that order (the last 15 ids)."""
        return self.vocabulary_ids.staria_ids

    def tokenize(
        self, midi: MidiSource, add_dim_tok: bool = False, add_eos_tok: bool = True
    ) -> list[Token]:
        """Aria's tokens for a MIDI path, bytes or PrettyMIDI; `MidiReadError` if unusable."""
        ids = self.tokenize_ids(midi, add_dim_tok=add_dim_tok, add_eos_tok=add_eos_tok)
        return self.decode(ids.tolist())

    def tokenize_ids(
        self, midi: MidiSource, add_dim_tok: bool = False, add_eos_tok: bool = True
    ) -> np.ndarray:
        """`encode(tokenize(midi))` as an array, without per-note Python work (bulk path).

        A piece over `self.limits` raises `MidiReadError`, or is cropped to them.
        """
        return self.notes_to_ids(
            read_notes(midi), add_dim_tok, add_eos_tok, limits_name=source_name(midi)
        )

    def ids_within_limits(
        self, notes: NoteTable, name: str, add_dim_tok: bool = False, add_eos_tok: bool = True
    ) -> tuple[np.ndarray, NoteTable, str | None]:
        """Token ids of `notes` within `self.limits`, the notes they hold, and what was cut
        (None: every note fits).

        One pass over the notes decides the fit and makes the ids; `MidiReadError` (naming
        `name`) when over a limit without `crop`, so nothing the size of an oversized piece is
        ever allocated.
        """
        onset_abs, raw_duration = self._onsets_and_durations(notes)
        ends = np.cumsum(self._note_token_lengths(notes, onset_abs))
        kept, cut = self._notes_within_limits(notes, onset_abs, ends, name)
        if cut is not None:
            notes = notes.select(slice(0, kept))
            return self.notes_to_ids(notes, add_dim_tok, add_eos_tok), notes, cut
        ids = self._assemble(notes, onset_abs, raw_duration, ends, add_dim_tok, add_eos_tok)
        return ids, notes, None

    def _notes_within_limits(
        self, notes: NoteTable, onset_abs: np.ndarray, ends: np.ndarray, name: str
    ) -> tuple[int, str | None]:
        """How many leading notes fit `self.limits` and what was cut (None: all fit), given
        the body token count through each note (`ends`); `MidiReadError` if none may stay."""
        max_ms = self.limits.max_duration_s * 1000
        # Tokens up to and including each note: prefix, <S>, notes with their <T>s, <E>, <D>.
        fixed = len(self._prefix_families(notes)) + 3
        span_ms = onset_abs.max() - onset_abs[0]
        if span_ms <= max_ms and fixed + ends[-1] <= self.limits.max_tokens:
            return len(notes), None
        fits = (onset_abs - onset_abs[0] <= max_ms) & (fixed + ends <= self.limits.max_tokens)
        kept = int(np.argmin(fits))  # notes are in onset order: the first misfit ends the piece
        over = f"{span_ms / 1000:.0f} s" if span_ms > max_ms else f"{fixed + ends[-1]} tokens"
        limits = (
            f"max_duration_s={self.limits.max_duration_s:g}, max_tokens={self.limits.max_tokens}"
        )
        if not self.limits.crop or kept == 0:
            raise MidiReadError(name, f"piece of {over} exceeds the limits ({limits})")
        return kept, f"cropped to {kept} of {len(notes)} notes: {over} over {limits}"

    def notes_to_ids(
        self,
        notes: NoteTable,
        add_dim_tok: bool = False,
        add_eos_tok: bool = True,
        limits_name: str | None = None,
    ) -> np.ndarray:
        """Token ids of a note table; `AriaNotes` carry Aria's exact times and instruments.

        With `limits_name` (how errors name the input), `self.limits` apply, checked before
        the token array is allocated (`ids_within_limits`); without, the caller vouches for
        the size (it made the notes, or they came from ids).
        """
        if limits_name is not None:
            return self.ids_within_limits(notes, limits_name, add_dim_tok, add_eos_tok)[0]
        onset_abs, raw_duration = self._onsets_and_durations(notes)
        ends = np.cumsum(self._note_token_lengths(notes, onset_abs))
        return self._assemble(notes, onset_abs, raw_duration, ends, add_dim_tok, add_eos_tok)

    def _assemble(
        self,
        notes: NoteTable,
        onset_abs: np.ndarray,
        raw_duration: np.ndarray,
        ends: np.ndarray,
        add_dim_tok: bool,
        add_eos_tok: bool,
    ) -> np.ndarray:
        """The ids of `notes`, given their onsets, durations and token ends (one pass)."""
        families = self._prefix_families(notes)
        duration = self._dur_table[np.clip(raw_duration, 0, MAX_DUR_MS)]
        onset = self._onset_table[onset_abs % SEGMENT_MS]  # Python modulo: see _note_token_lengths
        velocity = self._velocity_table[notes.velocity]
        is_drum = notes.family == DRUM_FAMILY_INDEX
        known_drum = (notes.pitch >= DRUM_PITCHES[0]) & (notes.pitch <= DRUM_PITCHES[-1])
        note_ids = np.where(
            is_drum,
            np.where(known_drum, self._drum_base + notes.pitch - DRUM_PITCHES[0], self.unknown_id),
            self._note_base
            + (notes.family * 128 + notes.pitch) * self._velocity_levels
            + velocity // VELOCITY_STEP,
        )
        note_len = np.where(is_drum, 2, 3)
        note_at = ends - note_len
        body = np.full(ends[-1], self.time_id, dtype=np.int64)
        body[note_at] = note_ids
        body[note_at + 1] = self._onset_base + onset // TIME_STEP_MS
        pitched = ~is_drum
        body[note_at[pitched] + 2] = self._dur_base + duration[pitched] // TIME_STEP_MS
        prefix = self._prefix_base + families
        if add_dim_tok and len(body) > DIM_TOKEN_OFFSET:
            # <D> goes at the first note boundary at least DIM_TOKEN_OFFSET tokens before the end.
            boundary = note_at[note_at <= len(body) - DIM_TOKEN_OFFSET]
            if len(boundary):
                body = np.insert(body, boundary[-1], self.dim_id)
        tail = [self.eos_id] if add_eos_tok else []
        return np.concatenate([prefix, [self.bos_id], body, tail]).astype(np.int64)

    @staticmethod
    def _onsets_and_durations(notes: NoteTable) -> tuple[np.ndarray, np.ndarray]:
        """Integer ms onsets (from the first note) and durations the tokens are made from."""
        if isinstance(notes, AriaNotes):
            return notes.onset_ms, notes.duration_ms
        onset_abs = np.rint(notes.start_ms - notes.start_ms[0]).astype(np.int64)
        return onset_abs, np.rint(notes.end_ms - notes.start_ms).astype(np.int64)

    @staticmethod
    def _prefix_families(notes: NoteTable) -> np.ndarray:
        if isinstance(notes, AriaNotes):
            return notes.prefix_families
        return np.unique(notes.family)

    @staticmethod
    def _note_token_lengths(notes: NoteTable, onset_abs: np.ndarray) -> np.ndarray:
        """Tokens each note adds: its <T>s since the previous note, then 3 (2 for drums)."""
        # Floor division as in Python: an onset before the first note (possible with Aria's
        # clock) sits in segment -1 and adds no <T>.
        time_tokens = np.maximum(np.diff(onset_abs // SEGMENT_MS, prepend=0), 0)
        return time_tokens + np.where(notes.family == DRUM_FAMILY_INDEX, 2, 3)

    def _note_spans(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions of well-formed notes in `ids`, whether each is a drum, and its onset in ms."""
        is_time = ids == self.time_id
        segment = np.cumsum(is_time)
        is_pitched = (ids >= self._note_base) & (ids < self._drum_base)
        is_drum = ((ids >= self._drum_base) & (ids < self._dur_base)) | (ids == self.unknown_id)
        padded = np.concatenate([ids, [self.pad_id, self.pad_id]])
        onset_next = (padded[1:-1] >= self._onset_base) & (
            padded[1:-1] < self._onset_base + self.vocabulary_ids.onset_count
        )
        dur_after = (padded[2:] >= self._dur_base) & (padded[2:] < self._onset_base)
        at = np.flatnonzero((is_pitched & onset_next & dur_after) | (is_drum & onset_next))
        onset_ms = segment[at] * SEGMENT_MS + (ids[at + 1] - self._onset_base) * TIME_STEP_MS
        return at, is_drum[at], onset_ms

    def ids_to_notes(self, ids: np.ndarray) -> NoteTable:
        """The notes a token-id sequence describes, times in ms from the sequence start (each
        `<T>` before a note adds 5 s); drums last 100 ms (`DRUM_NOTE_MS`)."""
        return self.notes_at(ids)[0]

    def notes_at(self, ids: np.ndarray) -> tuple[NoteTable, np.ndarray]:
        """`ids_to_notes`, and for each note the index of its first token in `ids` [N]: the one
        decoder from ids to notes (MIDI writing and evaluation alike).

        A note is a well-formed `(family, pitch, velocity), onset, dur` triple or a
        `(drum, pitch), onset` pair; anything else is skipped. Velocity 0 and duration 0 are in
        the vocabulary but never tokenized; they are read as 1 and 10 ms (a note-on of velocity
        0 would be a note-off, a 0 ms note's off would precede its on).
        """
        ids = np.asarray(ids, dtype=np.int64)
        at, drum, onset_ms = self._note_spans(ids)
        known = ids[at] != self.unknown_id  # <U> drums have no pitch to write
        at, onset_ms = at[known], onset_ms[known]
        drum = ids[at] >= self._drum_base
        note_index = np.where(drum, 0, ids[at] - self._note_base)
        family = np.where(drum, DRUM_FAMILY_INDEX, note_index // (128 * self._velocity_levels))
        pitch = np.where(
            drum,
            ids[at] - self._drum_base + DRUM_PITCHES[0],
            note_index // self._velocity_levels % 128,
        )
        level = note_index % self._velocity_levels
        velocity = np.where(drum, MAX_VELOCITY, np.maximum(level * VELOCITY_STEP, 1))
        dur_ids = ids[np.minimum(at + 2, len(ids) - 1)]
        duration = np.where(
            drum, DRUM_NOTE_MS, np.maximum((dur_ids - self._dur_base) * TIME_STEP_MS, TIME_STEP_MS)
        )
        notes = NoteTable(
            family,
            pitch,
            velocity,
            onset_ms.astype(np.float64),
            (onset_ms + duration).astype(np.float64),
        )
        return notes, at

    def detokenize(self, tokens: list[Token]) -> pretty_midi.PrettyMIDI:
        """A PrettyMIDI with one instrument per family present (drums on channel 10): the
        file `write_midi` writes, parsed by pretty_midi."""
        notes = self.ids_to_notes(np.asarray(self.encode(tokens)))
        return pretty_midi.PrettyMIDI(io.BytesIO(notes_to_midi_bytes(notes)))

    def write_midi(self, tokens: list[Token], path: str | Path) -> None:
        """Write `tokens` as a MIDI file (`midi_io.notes_to_midi_bytes`: one track per family,
        1 ms per tick), without pretty_midi's cost.

        Tokenizing the file gives `tokens` back, except where two notes of one family and
        pitch overlap: one MIDI channel cannot hold them apart, and the reader pairs them as
        Aria does (a note-off ends every earlier note of its pitch).
        """
        notes = self.ids_to_notes(np.asarray(self.encode(tokens)))
        Path(path).write_bytes(notes_to_midi_bytes(notes))

    def augment_pitch(self, tokens: list[Token], semitones: int) -> list[Token]:
        """Transpose pitched notes; notes pushed outside 0..127 are dropped with their timing."""
        return self.decode(self.augment_pitch_ids(self._ids(tokens), semitones).tolist())

    def augment_velocity(self, tokens: list[Token], steps: int) -> list[Token]:
        """Move every pitched note's velocity by `steps` x 10, clamped to 10..120."""
        return self.decode(self.augment_velocity_ids(self._ids(tokens), steps).tolist())

    def augment_tempo(self, tokens: list[Token], factor: float) -> list[Token]:
        """Stretch time by `factor` (> 1 is slower); onsets and durations re-snap, <T> recomputed.

        The result is a plain piece (prefix, <S>, notes, <E>); section markers are not kept.
        """
        return self.decode(self.augment_tempo_ids(self._ids(tokens), factor).tolist())

    def augment_pitch_ids(self, ids: np.ndarray, semitones: int) -> np.ndarray:
        """`augment_pitch` on ids, for data loaders that never leave id space."""
        at, drum, _ = self._note_spans(ids)
        at = at[~drum]
        note_index = ids[at] - self._note_base
        pitch = note_index // self._velocity_levels % 128 + semitones
        shifted = ids.copy()
        shifted[at] += semitones * self._velocity_levels
        dropped = at[(pitch < 0) | (pitch > 127)]
        keep = np.ones(len(ids), dtype=bool)
        for offset in range(3):
            keep[dropped + offset] = False
        return shifted[keep]

    def augment_velocity_ids(self, ids: np.ndarray, steps: int) -> np.ndarray:
        """`augment_velocity` on ids."""
        at, drum, _ = self._note_spans(ids)
        at = at[~drum]
        level = (ids[at] - self._note_base) % self._velocity_levels
        new_level = np.clip(level + steps, 1, self._velocity_levels - 1)
        shifted = ids.copy()
        shifted[at] += new_level - level
        return shifted

    def augment_tempo_ids(self, ids: np.ndarray, factor: float) -> np.ndarray:
        """`augment_tempo` on ids: a plain piece (prefix, <S>, notes, <E> if `ids` had one)."""
        notes = self.ids_to_notes(ids)
        duration = notes.end_ms - notes.start_ms
        start = np.rint(notes.start_ms * factor)
        stretched = NoteTable(
            notes.family, notes.pitch, notes.velocity, start, start + np.rint(duration * factor)
        )
        return self.notes_to_ids(stretched, add_eos_tok=bool((ids == self.eos_id).any()))

    def _ids(self, tokens: list[Token]) -> np.ndarray:
        return np.asarray(self.encode(tokens), dtype=np.int64)
