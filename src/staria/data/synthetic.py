"""Form-aware synthetic pieces: MIDI whose musical form and section timeline are known exactly.

Two sources of section material: `generated` composes every letter from nothing
(`composition`), `stitched` takes each letter from the beginning of a different real MIDI file
(`stitching`). This module lays the letters out in form order: a repeated letter reuses the same
material, so repeats are recognisable; lengths are measured with the tokenizer, not estimated.
Output layout: docs/data-format.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from staria.data.composition import generated_materials
from staria.data.labels import SYNTHETIC_SOURCES, PieceLabels, Section, labels_path
from staria.data.section_material import PIANO, SectionMaterial, SynthesisError
from staria.data.stitching import source_pools, stitched_materials
from staria.tokenizer import FORMS, GENRES, MusicTokenizerWithStyle
from staria.tokenizer.midi_io import (
    DRUM,
    FAMILIES,
    PROGRAM_GROUP_FAMILIES,
    SUSTAIN_PEDAL_CC,
    MidiSource,
)

DEFAULT_FORMS = tuple(form for form in FORMS if len(form) > 1)  # every form of two or more sections
MAX_FIT_ATTEMPTS = 8
# One tick is one millisecond (120 bpm, 500 ticks per beat), so written times stay on the ms grid.
MIDI_TICKS_PER_BEAT = 500
MIDI_TEMPO_BPM = 120.0


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
        if self.source not in SYNTHETIC_SOURCES:
            raise ValueError(f"source: {self.source!r} is not one of {SYNTHETIC_SOURCES}")
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


def synthesize(config: SynthesisConfig, out_dir: str | Path) -> list[Path]:
    """Write `pieces_per_form` pieces per form under `out_dir/<split>/`; returns the MIDI paths."""
    out_dir = Path(out_dir)
    tokenizer = MusicTokenizerWithStyle()
    plan = _split_plan(config)
    pools = source_pools(config, plan) if config.source == "stitched" else {}
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
                materials = generated_materials(
                    form, genre, config.max_tokens, config.sustain_pedal, rng
                )
                style, origins = {"composer": None, "form": None, "genre": genre}, None
            else:
                materials, style, origins = stitched_materials(form, pools[split, form], rng)
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
