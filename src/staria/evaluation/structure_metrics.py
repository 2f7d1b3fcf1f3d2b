"""Metrics on generated samples that need no classifier: form, section self-similarity, texture.

Definitions (and why these) are in docs/evaluation.md. Everything works on note arrays
(`staria.midi_io.NoteTable`), never note by note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from staria.evaluation.notes import SectionedNotes, TokenTable, sectioned_notes
from staria.evaluation.samples import GeneratedSample
from staria.midi_io import MidiReadError, NoteTable, read_notes

# Rhythm bins (ms) shared by inter-onset intervals and durations: roughly log-spaced, so a
# 16th at 120 bpm (125 ms) and a half note (1 s) land in different bins.
RHYTHM_BIN_EDGES_MS = np.array(
    [0, 60, 120, 180, 250, 375, 500, 750, 1000, 1500, 2000, 3000, np.inf]
)
MAX_INTERVAL = 12  # melodic intervals are clipped to an octave either way


@dataclass(frozen=True)
class StructureMetrics:
    """Aggregates over a set of samples; None where no sample gives the quantity a meaning."""

    num_samples: int
    eos_fraction: float
    valid_midi_fraction: float
    complete_fraction: float
    form_match_fraction: float | None
    section_similarity_same: float | None
    section_similarity_different: float | None
    section_similarity_gap: float | None
    pitch_class_js: float | None
    inter_onset_js: float | None
    duration_js: float | None
    note_density: float | None
    polyphony: float | None
    silence_ratio: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class Texture:
    """How full one piece is over `[0, last note end]`: notes per second, mean number of notes
    sounding while anything sounds, and the fraction of time where nothing sounds."""

    note_density: float
    polyphony: float
    silence_ratio: float


def _normalised(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else counts.astype(np.float64)


def pitch_class_histogram(notes: NoteTable) -> np.ndarray:
    return np.bincount(np.asarray(notes.pitch) % 12, minlength=12).astype(np.float64)


def interval_histogram(notes: NoteTable) -> np.ndarray:
    """Signed semitone steps between successive notes in (onset, pitch) order, clipped to ±12."""
    order = np.lexsort((notes.pitch, notes.start_ms))
    steps = np.clip(np.diff(np.asarray(notes.pitch)[order]), -MAX_INTERVAL, MAX_INTERVAL)
    return np.bincount(steps + MAX_INTERVAL, minlength=2 * MAX_INTERVAL + 1).astype(np.float64)


def inter_onset_histogram(notes: NoteTable) -> np.ndarray:
    """Gaps between successive distinct onsets; a chord counts once."""
    gaps = np.diff(np.unique(notes.start_ms))
    return np.histogram(gaps, RHYTHM_BIN_EDGES_MS)[0].astype(np.float64)


def duration_histogram(notes: NoteTable) -> np.ndarray:
    return np.histogram(notes.end_ms - notes.start_ms, RHYTHM_BIN_EDGES_MS)[0].astype(np.float64)


def section_profile(notes: NoteTable) -> np.ndarray:
    """Pitch-class, interval, inter-onset and duration histograms, each summing to 1, end to end:
    transposition-sensitive harmony plus transposition-free melody and rhythm, weighted equally."""
    parts = (pitch_class_histogram, interval_histogram, inter_onset_histogram, duration_histogram)
    return np.concatenate([_normalised(part(notes)) for part in parts])


def _take(notes: NoteTable, keep: np.ndarray) -> NoteTable:
    return NoteTable(*(getattr(notes, f)[keep] for f in NoteTable.__dataclass_fields__))


def section_similarities(piece: SectionedNotes) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of each section to the first occurrence of every earlier letter,
    split into (same letter, different letter). Sections without notes take no part."""
    profiles = [
        section_profile(_take(piece.notes, piece.note_section == index))
        for index in range(len(piece.letters))
    ]
    first = {}
    same, different = [], []
    for index, letter in enumerate(piece.letters):
        if not profiles[index].any():
            continue
        for earlier_letter, earlier in first.items():
            a, b = profiles[index], profiles[earlier]
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            (same if earlier_letter == letter else different).append(cosine)
        first.setdefault(letter, index)
    return np.array(same), np.array(different)


def texture(notes: NoteTable) -> Texture:
    """Sweep over note starts (+1) and ends (-1) to get the sounding count between events."""
    span_ms = float(np.max(notes.end_ms))
    times = np.concatenate([notes.start_ms, notes.end_ms])
    steps = np.concatenate([np.ones(len(notes)), -np.ones(len(notes))])
    order = np.argsort(times, kind="stable")
    sounding = np.cumsum(steps[order])[:-1]
    lengths = np.diff(times[order])
    sounding_ms = lengths[sounding > 0].sum()
    return Texture(
        note_density=len(notes) / (span_ms / 1000),
        polyphony=float((sounding * lengths).sum() / sounding_ms) if sounding_ms > 0 else 0.0,
        silence_ratio=float(1 - sounding_ms / span_ms),
    )


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Square root of the base-2 Jensen-Shannon divergence of two count vectors: 0 for equal
    distributions, 1 for disjoint ones."""
    p, q = _normalised(p), _normalised(q)
    mean = (p + q) / 2

    def kl_to_mean(x: np.ndarray) -> float:
        present = x > 0
        return float(np.sum(x[present] * np.log2(x[present] / mean[present])))

    return float(np.sqrt(max((kl_to_mean(p) + kl_to_mean(q)) / 2, 0.0)))


def decodes_to_midi(sample: GeneratedSample) -> bool:
    """Whether the sample's MIDI file reads back with at least one note."""
    try:
        read_notes(sample.midi_path)
    except MidiReadError:
        return False
    return True


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def structure_metrics(
    samples: Sequence[GeneratedSample], table: TokenTable, reference: Sequence[NoteTable] = ()
) -> StructureMetrics:
    """All structure metrics of `samples`; histogram distances only when `reference` is given."""
    if not samples:
        raise ValueError("structure_metrics needs at least one generated sample, got none")
    pieces = [sectioned_notes(sample.token_ids, table) for sample in samples]
    eos = np.array([sample.ended_with_eos for sample in samples])
    valid = np.array([decodes_to_midi(sample) for sample in samples])
    forms = [(piece.form, s.form) for piece, s in zip(pieces, samples, strict=True) if s.form]
    similarities = [section_similarities(piece) for piece in pieces]
    same = np.concatenate([pair[0] for pair in similarities])
    different = np.concatenate([pair[1] for pair in similarities])
    textures = [texture(p.notes) for p in pieces if len(p.notes) and p.notes.end_ms.max() > 0]
    distances: dict[str, float | None] = dict.fromkeys(("pitch_class", "inter_onset", "duration"))
    generated_notes = [piece.notes for piece in pieces if len(piece.notes)]
    if reference and generated_notes:
        for name, histogram in zip(
            distances,
            (pitch_class_histogram, inter_onset_histogram, duration_histogram),
            strict=True,
        ):
            distances[name] = jensen_shannon_distance(
                sum(histogram(notes) for notes in generated_notes),
                sum(histogram(notes) for notes in reference),
            )
    same_mean, different_mean = _mean(same), _mean(different)
    return StructureMetrics(
        num_samples=len(samples),
        eos_fraction=float(eos.mean()),
        valid_midi_fraction=float(valid.mean()),
        complete_fraction=float((eos & valid).mean()),
        form_match_fraction=_mean([found == requested for found, requested in forms]),
        section_similarity_same=same_mean,
        section_similarity_different=different_mean,
        section_similarity_gap=(
            same_mean - different_mean
            if same_mean is not None and different_mean is not None
            else None
        ),
        pitch_class_js=distances["pitch_class"],
        inter_onset_js=distances["inter_onset"],
        duration_js=distances["duration"],
        note_density=_mean([t.note_density for t in textures]),
        polyphony=_mean([t.polyphony for t in textures]),
        silence_ratio=_mean([t.silence_ratio for t in textures]),
    )
