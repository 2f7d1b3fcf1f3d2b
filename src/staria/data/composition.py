"""The generated source of synthetic pieces: each letter's material composed from nothing (its
own key, tempo, progression, accompaniment texture and melody), deterministic given the rng."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from staria.data.section_material import PIANO, SectionMaterial, on_grid
from staria.tokenizer import TIME_STEP_MS

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


def generated_materials(
    form: str, genre: str, max_tokens: int, sustain_pedal: bool, rng: np.random.Generator
) -> dict[str, SectionMaterial]:
    """Material for each letter of `form`, enough for a piece of `max_tokens`; the letters
    differ in key, tempo band, progression and texture; jazz swings and adds sevenths."""
    letters = sorted(set(form))
    tonics = rng.choice(12, len(letters), replace=False)
    tempo_bands = rng.permutation(len(TEMPO_BANDS_BPM))
    progressions = rng.choice(len(PROGRESSIONS), len(letters), replace=False)
    textures = rng.permutation(len(TEXTURES))
    # Enough material for an occurrence twice its even share of the longest piece.
    needed_tokens = 2 * max_tokens // len(form) + 64
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
        materials[letter] = _compose(style, needed_tokens, sustain_pedal, rng)
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
    onset_ms = on_grid(onset_beats * beat_ms)
    end_ms = np.maximum(on_grid((onset_beats + lengths) * beat_ms), onset_ms + TIME_STEP_MS)
    cut_points = on_grid(np.arange(1, bar * style.beats_per_bar + 1) * beat_ms)
    pedal = np.zeros((0, 2), dtype=np.int64)
    if sustain_pedal:
        bar_starts = on_grid(np.arange(bar + 1) * style.beats_per_bar * beat_ms)
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
