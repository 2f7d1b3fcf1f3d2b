"""Metrics on generated samples that need no classifier: form, section self-similarity, texture.

Definitions (and why these) are in docs/evaluation.md. Everything works on note arrays
(`staria.tokenizer.midi_io.NoteTable`), never note by note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from staria.evaluation.notes import SectionedNotes, sectioned_notes
from staria.evaluation.samples import GeneratedSample
from staria.statistics import wilson_interval
from staria.tokenizer import MidiReadError, NoteTable, TokenTable, read_notes

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


def section_profiles(piece: SectionedNotes) -> list[np.ndarray]:
    """`section_profile` of each of `piece`'s sections, in order (all zeros: no notes)."""
    return [
        section_profile(_take(piece.notes, piece.note_section == index))
        for index in range(len(piece.letters))
    ]


def section_similarities(piece: SectionedNotes) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of each section to the first occurrence of every earlier letter,
    split into (same letter, different letter). Sections without notes take no part."""
    profiles = section_profiles(piece)
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
    return metrics_of(
        [sectioned_notes(sample.token_ids, table) for sample in samples],
        ended=[sample.ended_with_eos for sample in samples],
        valid=[decodes_to_midi(sample) for sample in samples],
        requested=[sample.form for sample in samples],
        reference=reference,
    )


def metrics_of(
    pieces: Sequence[SectionedNotes],
    ended: Sequence[bool],
    valid: Sequence[bool],
    requested: Sequence[str | None],
    reference: Sequence[NoteTable] = (),
) -> StructureMetrics:
    """The metrics of decoded pieces: whether each ended with `<E>`, reads back as MIDI, and
    the form it was asked for (None: not asked)."""
    eos, valid = np.asarray(ended, dtype=bool), np.asarray(valid, dtype=bool)
    forms = [(p.form, r) for p, r in zip(pieces, requested, strict=True) if r]
    similarities = [section_similarities(piece) for piece in pieces]
    same = np.concatenate([pair[0] for pair in similarities])
    different = np.concatenate([pair[1] for pair in similarities])
    textures = [texture(p.notes) for p in pieces if len(p.notes) and p.notes.end_ms.max() > 0]
    distances = histogram_distances([p.notes for p in pieces if len(p.notes)], reference)
    same_mean, different_mean = _mean(same), _mean(different)
    return StructureMetrics(
        num_samples=len(pieces),
        eos_fraction=float(eos.mean()),
        valid_midi_fraction=float(valid.mean()),
        complete_fraction=float((eos & valid).mean()),
        form_match_fraction=_mean([found == asked for found, asked in forms]),
        section_similarity_same=same_mean,
        section_similarity_different=different_mean,
        section_similarity_gap=(
            same_mean - different_mean
            if same_mean is not None and different_mean is not None
            else None
        ),
        pitch_class_js=distances["pitch_class_js"],
        inter_onset_js=distances["inter_onset_js"],
        duration_js=distances["duration_js"],
        note_density=_mean([t.note_density for t in textures]),
        polyphony=_mean([t.polyphony for t in textures]),
        silence_ratio=_mean([t.silence_ratio for t in textures]),
    )


HISTOGRAMS = {
    "pitch_class_js": pitch_class_histogram,
    "inter_onset_js": inter_onset_histogram,
    "duration_js": duration_histogram,
}


def histogram_distances(
    notes: Sequence[NoteTable], reference: Sequence[NoteTable]
) -> dict[str, float | None]:
    """Jensen-Shannon distance of the pooled histograms of `notes` to those of `reference`."""
    if not notes or not reference:
        return dict.fromkeys(HISTOGRAMS)
    return {
        name: jensen_shannon_distance(
            sum(histogram(n) for n in notes), sum(histogram(n) for n in reference)
        )
        for name, histogram in HISTOGRAMS.items()
    }


def reference_metrics(pieces: Sequence[SectionedNotes], forms: Sequence[str | None]) -> dict:
    """The metrics of the reference pieces themselves (what a perfect model scores): each
    piece ends and reads back; its form is asked for; histogram distances are between the
    reference's two halves (even and odd pieces), the floor that sampling alone leaves."""
    halves = [p.notes for p in pieces[::2]], [p.notes for p in pieces[1::2]]
    metrics = metrics_of(pieces, [True] * len(pieces), [True] * len(pieces), forms).as_dict()
    metrics.update(histogram_distances(halves[0], halves[1] if len(pieces) > 1 else ()))
    return metrics


def chance_metrics(reference: Sequence[NoteTable], num_forms: int) -> dict[str, float | None]:
    """What a model that knows nothing scores: a form drawn at random matches one time in
    `num_forms`; letters drawn at random make same-letter and different-letter sections alike
    (gap 0); notes drawn uniformly over each histogram's bins give these distances."""
    uniform = {name: None for name in HISTOGRAMS}
    if reference:
        for name, histogram in HISTOGRAMS.items():
            pooled = sum(histogram(notes) for notes in reference)
            uniform[name] = jensen_shannon_distance(np.ones_like(pooled), pooled)
    return {"form_match_fraction": 1 / num_forms, "section_similarity_gap": 0.0, **uniform}


# What each metric says, for reports (docs/evaluation.md has the definitions).
MEANINGS = {
    "num_samples": "samples scored",
    "eos_fraction": "samples that ended with <E> (the rest hit the length limit)",
    "valid_midi_fraction": "samples whose MIDI file reads back with at least one note",
    "complete_fraction": "samples that ended with <E> and read back",
    "form_match_fraction": "samples whose section tokens spell the form asked for",
    "section_similarity_same": "cosine of material profiles, a section vs. an earlier one of "
    "the same letter (returns)",
    "section_similarity_different": "the same, vs. earlier sections of other letters",
    "section_similarity_gap": "same minus different: returning sections reuse their material",
    "pitch_class_js": "JS distance of pitch-class histograms to the reference (0: equal)",
    "inter_onset_js": "JS distance of inter-onset-interval histograms to the reference",
    "duration_js": "JS distance of note-duration histograms to the reference",
    "note_density": "notes per second",
    "polyphony": "mean notes sounding while anything sounds",
    "silence_ratio": "fraction of the piece where nothing sounds",
}


def metric_intervals(
    samples: Sequence[GeneratedSample], table: TokenTable, resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float] | None]:
    """95% intervals of the per-sample metrics: Wilson intervals of the fractions, percentile
    bootstrap over samples (`resamples` draws, seeded) of the section-similarity gap and the
    texture means. None where a metric has no value."""
    pieces = [sectioned_notes(sample.token_ids, table) for sample in samples]
    eos = np.array([sample.ended_with_eos for sample in samples])
    valid = np.array([decodes_to_midi(sample) for sample in samples])
    matches = [p.form == s.form for p, s in zip(pieces, samples, strict=True) if s.form]
    intervals: dict[str, tuple[float, float] | None] = {
        "eos_fraction": wilson_interval(int(eos.sum()), len(eos)),
        "valid_midi_fraction": wilson_interval(int(valid.sum()), len(valid)),
        "complete_fraction": wilson_interval(int((eos & valid).sum()), len(eos)),
        "form_match_fraction": wilson_interval(sum(matches), len(matches)),
    }
    similarities = [section_similarities(piece) for piece in pieces]
    textures = [
        asdict(texture(p.notes)) if len(p.notes) and p.notes.end_ms.max() > 0 else None
        for p in pieces
    ]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(pieces), size=(resamples, len(pieces)))

    def bootstrap(statistic) -> tuple[float, float] | None:
        values = [v for v in (statistic(draw) for draw in draws) if v is not None]
        if statistic(np.arange(len(pieces))) is None or not values:
            return None
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)

    def gap(draw: np.ndarray) -> float | None:
        same = np.concatenate([similarities[i][0] for i in draw])
        different = np.concatenate([similarities[i][1] for i in draw])
        return float(same.mean() - different.mean()) if len(same) and len(different) else None

    def texture_mean(name: str):
        def mean(draw: np.ndarray) -> float | None:
            values = [textures[i][name] for i in draw if textures[i] is not None]
            return float(np.mean(values)) if values else None

        return mean

    intervals["section_similarity_gap"] = bootstrap(gap)
    for name in ("note_density", "polyphony", "silence_ratio"):
        intervals[name] = bootstrap(texture_mean(name))
    return intervals
