"""Form-aware synthetic pieces: MIDI whose musical form and section timeline are known exactly.

Two sources of section material: `generated` composes every letter from nothing (its own key,
tempo, progression, texture and melody), `stitched` takes each letter from the beginning of a
different real MIDI file. A repeated letter reuses the same material, so repeats are recognisable.
Lengths are measured with the tokenizer, not estimated. Output layout: docs/data-format.md.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import symusic

from staria.data.labels import SPLITS, PieceLabels, Section, labels_path
from staria.tokenizer import FORMS, GENRES, TIME_STEP_MS, MusicTokenizerWithStyle
from staria.tokenizer.midi_io import (
    DRUM,
    DRUM_FAMILY_INDEX,
    FAMILIES,
    PROGRAM_GROUP_FAMILIES,
    SUSTAIN_PEDAL_CC,
    MidiReadError,
    MidiSource,
    read_notes,
    scan_midi_files,
)

log = logging.getLogger(__name__)

SOURCES = ("generated", "stitched")
DEFAULT_FORMS = ("AB", "ABC", "ABA", "ABAB", "ABAC", "ABCA", "ABCB", "ABCD")
METADATA_FILE = "metadata.json"
MAX_FIT_ATTEMPTS = 8
# One tick is one millisecond (120 bpm, 500 ticks per beat), so written times stay on the ms grid.
MIDI_TICKS_PER_BEAT = 500
MIDI_TEMPO_BPM = 120.0
PIANO = FAMILIES.index("piano")

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 11)}
# Scale degrees (0 = tonic), one chord per bar, cycled.
PROGRESSIONS = (
    (0, 3, 4, 0),
    (0, 5, 3, 4),
    (0, 4, 5, 3),
    (5, 3, 0, 4),
    (0, 1, 4, 0),
    (0, 3, 1, 4),
    (0, 2, 5, 4),
    (3, 4, 2, 5),
)
TEXTURES = ("block", "arpeggio", "alberti", "stride")
TEMPO_BANDS_BPM = ((60, 76), (84, 100), (108, 124), (132, 150))
# Melody rhythms in beats, one bar each, by beats per bar.
MELODY_RHYTHMS = {
    3: ((1, 1, 1), (2, 1), (1.5, 0.5, 1), (0.5, 0.5, 1, 1), (1, 0.5, 0.5, 1)),
    4: ((1, 1, 1, 1), (1.5, 0.5, 1, 1), (0.5, 0.5, 1, 2), (2, 1, 1), (1, 0.5, 0.5, 0.5, 0.5, 1)),
}
BASS_LOW, ACCOMPANIMENT_LOW, MELODY_LOW, MELODY_HIGH = 36, 48, 65, 88


class SynthesisError(RuntimeError):
    """Synthesis cannot honour its configuration (too few source files, unreachable length)."""


@dataclass(frozen=True)
class SynthesisConfig:
    """What to synthesise; the same config and seed always write byte-identical files."""

    pieces_per_form: int = 16
    forms: tuple[str, ...] = DEFAULT_FORMS
    seed: int = 0
    # Bounds on the labelled sequence length: tokenizer output + form token + one token per section.
    min_tokens: int = 256
    max_tokens: int = 1024
    source: str = "generated"
    source_dirs: tuple[Path, ...] = ()
    val_fraction: float = 0.125
    test_fraction: float = 0.0
    sustain_pedal: bool = False
    # Velocity jitter (MIDI units) on repeated occurrences of a letter; 0 repeats them exactly.
    repeat_velocity_jitter: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "forms", tuple(self.forms))
        object.__setattr__(self, "source_dirs", tuple(Path(d) for d in self.source_dirs))
        if self.source not in SOURCES:
            raise ValueError(f"source: {self.source!r} is not one of {SOURCES}")
        unknown_forms = [form for form in self.forms if form not in FORMS]
        if unknown_forms or self.pieces_per_form < 1:
            raise ValueError(
                f"forms/pieces_per_form: {unknown_forms or self.pieces_per_form} (forms: {FORMS})"
            )
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens/max_tokens: need 0 < {self.min_tokens} <= {self.max_tokens}"
            )
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise ValueError(
                f"val_fraction + test_fraction: {self.val_fraction} + {self.test_fraction} >= 1"
            )
        if self.source == "stitched" and not self.source_dirs:
            raise ValueError("source_dirs: the stitched source needs at least one folder of MIDI")


@dataclass(frozen=True)
class SectionMaterial:
    """The notes one letter may use, times in ms from its start, sorted by onset.

    A section plays a prefix of the material that ends at one of `cut_points_ms`; every
    occurrence of the letter plays the same prefix.
    """

    family: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    onset_ms: np.ndarray
    end_ms: np.ndarray
    cut_points_ms: np.ndarray
    pedal_ms: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    def tokens_before(self, cut_ms: np.ndarray) -> np.ndarray:
        """Note tokens (3 per pitched note, 2 per drum hit) of notes starting before each cut."""
        per_note = np.where(self.family == DRUM_FAMILY_INDEX, 2, 3)
        cumulative = np.concatenate([[0], np.cumsum(per_note)])
        return cumulative[np.searchsorted(self.onset_ms, cut_ms, side="left")]

    @property
    def capacity(self) -> int:
        return int(self.tokens_before(self.cut_points_ms[-1:])[0])

    def prefix(self, budget_tokens: float) -> SectionMaterial:
        """The longest prefix within `budget_tokens` note tokens (at least one cut point)."""
        fits = self.tokens_before(self.cut_points_ms) <= budget_tokens
        cut = self.cut_points_ms[max(int(np.count_nonzero(fits)) - 1, 0)]
        kept = self.onset_ms < cut
        pedal = self.pedal_ms[self.pedal_ms[:, 0] < cut]
        pedal = np.stack([pedal[:, 0], np.minimum(pedal[:, 1], cut - TIME_STEP_MS)], axis=1)
        return SectionMaterial(
            self.family[kept],
            self.pitch[kept],
            self.velocity[kept],
            self.onset_ms[kept],
            np.minimum(self.end_ms[kept], cut),
            np.array([cut]),
            pedal,
        )

    @property
    def duration_ms(self) -> int:
        return int(self.cut_points_ms[-1])


def synthesize(config: SynthesisConfig, out_dir: str | Path) -> list[Path]:
    """Write `pieces_per_form` pieces per form under `out_dir/<split>/`; returns the MIDI paths."""
    out_dir = Path(out_dir)
    tokenizer = MusicTokenizerWithStyle()
    plan = _split_plan(config)
    pools = _source_pools(config, plan) if config.source == "stitched" else {}
    written = []
    for form_index, form in enumerate(config.forms):
        for piece_index, split in enumerate(plan[form]):
            piece_seed = int(
                np.random.SeedSequence([config.seed, form_index, piece_index]).generate_state(1)[0]
            )
            rng = np.random.default_rng(piece_seed)
            target = int(rng.integers(config.min_tokens, config.max_tokens + 1))
            if config.source == "generated":
                genre = GENRES[piece_index % len(GENRES)]
                materials = _generated_materials(form, genre, target, config, rng)
                style, origins = {"composer": None, "form": None, "genre": genre}, None
            else:
                materials, style, origins = _stitched_materials(form, pools[split, form], rng)
            midi, sections = _fit_length(materials, form, target, config, tokenizer, rng)
            labels = PieceLabels(form, sections, style, config.source, piece_seed, split, origins)
            path = out_dir / split / f"{form}_{piece_index:05d}.mid"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(midi)
            labels.save(labels_path(path))
            written.append(path)
    return written


def labelled_length(tokenizer: MusicTokenizerWithStyle, midi: MidiSource, form: str) -> int:
    """Length of the piece's labelled decoder sequence: its tokens plus form and section tokens."""
    return len(tokenizer.tokenize(midi, add_dim_tok=False, add_eos_tok=True)) + 1 + len(form)


def _split_plan(config: SynthesisConfig) -> dict[str, list[str]]:
    """Each form's pieces' splits: the same counts in every form, so each split stays balanced."""
    n_val = round(config.pieces_per_form * config.val_fraction)
    n_test = round(config.pieces_per_form * config.test_fraction)
    n_train = config.pieces_per_form - n_val - n_test
    return {
        form: ["train"] * n_train + ["val"] * n_val + ["test"] * n_test for form in config.forms
    }


def _fit_length(
    materials: dict[str, SectionMaterial],
    form: str,
    target: int,
    config: SynthesisConfig,
    tokenizer: MusicTokenizerWithStyle,
    rng: np.random.Generator,
) -> tuple[bytes, list[Section]]:
    """Cut every letter so the measured labelled length lands in [min_tokens, max_tokens]."""
    occurrences = Counter(form)
    note_budget = float(target)
    for _ in range(MAX_FIT_ATTEMPTS):
        budgets = _water_fill(
            {letter: materials[letter].capacity for letter in occurrences}, occurrences, note_budget
        )
        cuts = {letter: materials[letter].prefix(budgets[letter]) for letter in occurrences}
        jitter_seed = int(rng.integers(2**31)) if config.repeat_velocity_jitter else 0
        midi, sections = _render(cuts, form, config, np.random.default_rng(jitter_seed))
        length = labelled_length(tokenizer, midi, form)
        if config.min_tokens <= length <= config.max_tokens:
            return midi, sections
        note_budget += target - length
    raise SynthesisError(
        f"form {form}: length {length} tokens stays outside "
        f"[{config.min_tokens}, {config.max_tokens}] after {MAX_FIT_ATTEMPTS} attempts "
        "(sources too short or token range too narrow)"
    )


def _water_fill(capacity: dict[str, int], occurrences: Counter, budget: float) -> dict[str, float]:
    """Per-letter token budgets, equal per occurrence except where a letter's material runs out."""
    remaining, letters_left = budget, sum(occurrences.values())
    for letter in sorted(capacity, key=capacity.get):
        share = remaining / letters_left
        if capacity[letter] >= share:
            level = share
            break
        remaining -= capacity[letter] * occurrences[letter]
        letters_left -= occurrences[letter]
    else:
        level = float("inf")
    return {letter: min(level, capacity[letter]) for letter in capacity}


def _render(
    cuts: dict[str, SectionMaterial],
    form: str,
    config: SynthesisConfig,
    jitter_rng: np.random.Generator,
) -> tuple[bytes, list[Section]]:
    """Lay the letters' sections end to end as MIDI bytes, one track per instrument family."""
    parts, sections, offset_ms, seen = [], [], 0, set()
    for letter in form:
        part = cuts[letter]
        velocity = part.velocity
        if letter in seen and config.repeat_velocity_jitter:
            jitter = config.repeat_velocity_jitter
            velocity = np.clip(
                velocity + jitter_rng.integers(-jitter, jitter + 1, len(velocity)), 1, 127
            )
        seen.add(letter)
        parts.append((part, velocity, offset_ms))
        sections.append(Section(letter, offset_ms / 1000, (offset_ms + part.duration_ms) / 1000))
        offset_ms += part.duration_ms
    family, pitch, velocity, onset, end = (
        np.concatenate(column)
        for column in zip(
            *(
                (p.family, p.pitch, v, p.onset_ms + offset, p.end_ms + offset)
                for p, v, offset in parts
            ),
            strict=True,
        )
    )
    pedal = np.concatenate([p.pedal_ms + offset for p, _, offset in parts])
    score = symusic.Score(MIDI_TICKS_PER_BEAT)
    score.tempos.append(symusic.Tempo(0, qpm=MIDI_TEMPO_BPM))
    for track_family in np.unique(family).tolist():
        here = family == track_family
        track = _track(track_family)
        track.notes = symusic.Note.from_numpy(
            onset[here].astype(np.int32),
            (end - onset)[here].astype(np.int32),
            pitch[here].astype(np.int8),
            velocity[here].astype(np.int8),
        )
        if track_family == PIANO and len(pedal):
            times = pedal.reshape(-1).astype(np.int32)
            values = np.tile([127, 0], len(pedal)).astype(np.int8)
            numbers = np.full(len(times), SUSTAIN_PEDAL_CC, dtype=np.int8)
            track.controls = symusic.ControlChange.from_numpy(times, numbers, values)
        score.tracks.append(track)
    return score.dumps_midi(), sections


def _track(family: int) -> symusic.Track:
    name = FAMILIES[family]
    if name == DRUM:
        return symusic.Track(DRUM, 0, True)
    return symusic.Track(name, 8 * PROGRAM_GROUP_FAMILIES.index(name), False)


# --- generated source -------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterStyle:
    """The musical identity of one letter; letters of one piece never share key or texture."""

    tonic: int
    mode: str
    tempo_bpm: int
    beats_per_bar: int
    progression: tuple[int, ...]
    texture: str
    melody_rhythms: tuple[tuple[float, ...], ...]
    dynamic: int
    swing: bool
    sevenths: bool


def _generated_materials(
    form: str, genre: str, target: int, config: SynthesisConfig, rng: np.random.Generator
) -> dict[str, SectionMaterial]:
    letters = sorted(set(form))
    tonics = rng.choice(12, len(letters), replace=False)
    tempo_bands = rng.permutation(len(TEMPO_BANDS_BPM))
    progressions = rng.choice(len(PROGRESSIONS), len(letters), replace=False)
    textures = rng.permutation(len(TEXTURES))
    # Enough material for an occurrence twice its even share of the longest piece.
    needed_tokens = 2 * config.max_tokens // len(form) + 64
    materials = {}
    for index, letter in enumerate(letters):
        beats_per_bar = int(rng.choice([3, 4]))
        rhythms = MELODY_RHYTHMS[beats_per_bar]
        style = LetterStyle(
            tonic=int(tonics[index]),
            mode=str(rng.choice(list(SCALES))),
            tempo_bpm=int(rng.integers(*TEMPO_BANDS_BPM[tempo_bands[index]])),
            beats_per_bar=beats_per_bar,
            progression=PROGRESSIONS[progressions[index]],
            texture=TEXTURES[textures[index % len(TEXTURES)]],
            melody_rhythms=tuple(rhythms[i] for i in rng.choice(len(rhythms), 2, replace=False)),
            dynamic=int(rng.integers(45, 90)),
            swing=genre == "jazz",
            sevenths=genre == "jazz",
        )
        materials[letter] = _compose(style, needed_tokens, config.sustain_pedal, rng)
    return materials


def _compose(
    style: LetterStyle, needed_tokens: int, sustain_pedal: bool, rng: np.random.Generator
) -> SectionMaterial:
    """Bars of accompaniment plus melody until the material holds `needed_tokens` note tokens."""
    scale = SCALES[style.mode]
    beat_ms = 60_000 / style.tempo_bpm
    notes: list[tuple[float, float, int, int]] = []  # onset beat, length in beats, pitch, velocity
    melody_degree = 9  # a third above the tonic's upper octave
    bar = 0
    while 3 * len(notes) < needed_tokens:
        degree = style.progression[bar % len(style.progression)]
        chord = [
            scale[(degree + step) % 7] + style.tonic
            for step in (0, 2, 4, 6)[: 4 if style.sevenths else 3]
        ]
        start = bar * style.beats_per_bar
        notes += _accompaniment(style, chord, start, rng)
        rhythm = style.melody_rhythms[bar % 2]
        position = 0.0
        for length in rhythm:
            strong = position == 0
            melody_degree = _next_melody_degree(melody_degree, degree, strong, rng)
            pitch = _degree_pitch(melody_degree, scale, style.tonic)
            onset = start + _swung(position, style.swing)
            end = start + _swung(position + length, style.swing)
            velocity = style.dynamic + 12 + (6 if strong else 0) + int(rng.integers(-4, 5))
            notes.append((onset, 0.95 * (end - onset), pitch, velocity))
            position += length
        bar += 1
    onset_beats, lengths, pitches, velocities = (
        np.array(column) for column in zip(*sorted(notes), strict=True)
    )
    onset_ms = _on_grid(onset_beats * beat_ms)
    end_ms = np.maximum(_on_grid((onset_beats + lengths) * beat_ms), onset_ms + TIME_STEP_MS)
    cut_points = _on_grid(np.arange(1, bar * style.beats_per_bar + 1) * beat_ms)
    pedal = np.zeros((0, 2), dtype=np.int64)
    if sustain_pedal:
        bar_starts = _on_grid(np.arange(bar + 1) * style.beats_per_bar * beat_ms)
        pedal = np.stack([bar_starts[:-1] + TIME_STEP_MS, bar_starts[1:] - TIME_STEP_MS], axis=1)
    return SectionMaterial(
        np.full(len(pitches), PIANO),
        pitches.astype(np.int64),
        np.clip(velocities, 1, 127).astype(np.int64),
        onset_ms,
        end_ms,
        cut_points,
        pedal,
    )


def _accompaniment(
    style: LetterStyle, chord: list[int], start: float, rng: np.random.Generator
) -> list[tuple[float, float, int, int]]:
    """One bar of the letter's texture under `chord` (pitch classes, root first)."""
    bass = BASS_LOW + (chord[0] - BASS_LOW) % 12
    voicing = sorted(ACCOMPANIMENT_LOW + (pc - ACCOMPANIMENT_LOW) % 12 for pc in chord)
    velocity = style.dynamic
    beats = style.beats_per_bar
    events: list[tuple[float, float, list[int]]] = []  # offset in beats, length in beats, pitches
    if style.texture == "block":
        events = [(0, beats, [bass])] + [(beat, 0.9, voicing) for beat in range(beats)]
    elif style.texture == "stride":
        events = [(beat, 0.5, [bass] if beat % 2 == 0 else voicing) for beat in range(beats)]
    else:
        if style.texture == "arpeggio":
            cycle = [bass, *voicing, *voicing[::-1][1:-1]]
        else:  # alberti: low, high, middle, high
            cycle = [voicing[0], voicing[-1], voicing[1], voicing[-1]]
            events = [(0, beats, [bass])]
        events += [
            (_swung(eighth / 2, style.swing), 0.45, [cycle[eighth % len(cycle)]])
            for eighth in range(2 * beats)
        ]
    return [
        (start + offset, length, pitch, velocity + int(rng.integers(-4, 5)))
        for offset, length, pitches in events
        for pitch in pitches
    ]


def _next_melody_degree(
    current: int, chord_degree: int, strong: bool, rng: np.random.Generator
) -> int:
    """A stepwise random walk over scale degrees that lands on a chord tone on strong beats."""
    step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2]))
    candidate = int(np.clip(current + step, 8, 20))
    if strong:
        chord_tones = [d for d in range(8, 21) if (d - chord_degree) % 7 in (0, 2, 4)]
        candidate = min(chord_tones, key=lambda d: abs(d - candidate))
    return candidate


def _degree_pitch(degree: int, scale: tuple[int, ...], tonic: int) -> int:
    pitch = 48 + tonic + 12 * (degree // 7) + scale[degree % 7]
    while pitch < MELODY_LOW:
        pitch += 12
    while pitch > MELODY_HIGH:
        pitch -= 12
    return pitch


def _swung(position: float, swing: bool) -> float:
    """Delay off-beat eighths to two thirds of the beat when swinging."""
    beat, fraction = divmod(position, 1.0)
    return beat + (2 / 3 if swing and fraction == 0.5 else fraction)


def _on_grid(milliseconds: np.ndarray) -> np.ndarray:
    """Round to the tokenizer's time step, so quantization never moves a note across a boundary."""
    return (np.round(np.asarray(milliseconds) / TIME_STEP_MS) * TIME_STEP_MS).astype(np.int64)


# --- stitched source --------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """A real MIDI file usable as section material, with its style labels if metadata gives them."""

    name: str
    material: SectionMaterial
    style: dict[str, str | None] | None


def _stitched_materials(
    form: str, pool: list[SourceFile], rng: np.random.Generator
) -> tuple[dict[str, SectionMaterial], dict[str, str | None] | None, dict[str, str]]:
    letters = sorted(set(form))
    chosen = [pool[i] for i in rng.choice(len(pool), len(letters), replace=False)]
    materials = {letter: source.material for letter, source in zip(letters, chosen, strict=True)}
    origins = {letter: source.name for letter, source in zip(letters, chosen, strict=True)}
    return materials, _shared_style([source.style for source in chosen]), origins


def _shared_style(styles: list[dict[str, str | None] | None]) -> dict[str, str | None] | None:
    """The style fields every source agrees on; null when no source has metadata."""
    if any(style is None for style in styles):
        return None
    keys = set().union(*styles)
    return {
        key: styles[0].get(key) if len({s.get(key) for s in styles}) == 1 else None
        for key in sorted(keys)
    }


def _source_pools(
    config: SynthesisConfig, plan: dict[str, list[str]]
) -> dict[tuple[str, str], list[SourceFile]]:
    """Deal usable source files to (split, form) pools, no file in two pools, fixed by the seed."""
    sources = _usable_sources(config)
    order = np.random.default_rng(config.seed).permutation(len(sources))
    sources = [sources[i] for i in order]
    letters_needed = {form: len(set(form)) for form in config.forms}
    pools: dict[tuple[str, str], list[SourceFile]] = {}
    splits_used = [split for split in SPLITS if any(split in splits for splits in plan.values())]
    need = {
        split: sum(n for f, n in letters_needed.items() if split in plan[f])
        for split in splits_used
    }
    fractions = {
        "train": 1 - config.val_fraction - config.test_fraction,
        "val": config.val_fraction,
        "test": config.test_fraction,
    }
    if len(sources) < sum(need.values()):
        raise SynthesisError(
            f"stitching forms {config.forms} needs {sum(need.values())} distinct usable source "
            f"files (each form and split its own), found {len(sources)} in "
            f"{[str(d) for d in config.source_dirs]}"
        )
    spare = len(sources) - sum(need.values())
    start = 0
    for split in splits_used:
        share = need[split] + int(spare * fractions[split] / sum(fractions[s] for s in splits_used))
        if split == splits_used[-1]:
            share = len(sources) - start
        split_sources = iter(sources[start : start + share])
        start += share
        forms = [form for form in config.forms if split in plan[form]]
        for form in forms:
            pools[split, form] = [next(split_sources) for _ in range(letters_needed[form])]
        for index, source in enumerate(split_sources):
            pools[split, forms[index % len(forms)]].append(source)
    return pools


def _usable_sources(config: SynthesisConfig) -> list[SourceFile]:
    """Readable files holding at least `min_tokens` note tokens; others are logged and skipped."""
    sources = []
    for source_dir in config.source_dirs:
        metadata_path = source_dir / METADATA_FILE
        metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
        for path in scan_midi_files([source_dir]):
            relative = path.relative_to(source_dir.resolve()).as_posix()
            try:
                notes = read_notes(path)
            except MidiReadError as error:
                log.warning("skipping source %s: %s", path, error.reason)
                continue
            onset = _on_grid(notes.start_ms - notes.start_ms[0])
            end = np.maximum(_on_grid(notes.end_ms - notes.start_ms[0]), onset + TIME_STEP_MS)
            distinct_onsets = np.unique(onset)
            cut_points = np.append(distinct_onsets[1:], end.max())
            material = SectionMaterial(
                notes.family, notes.pitch, notes.velocity, onset, end, cut_points
            )
            if material.capacity < config.min_tokens:
                log.info("skipping source %s: %d note tokens < min_tokens", path, material.capacity)
                continue
            sources.append(
                SourceFile(f"{source_dir.name}/{relative}", material, metadata.get(relative))
            )
    return sources
