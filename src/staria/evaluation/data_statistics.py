"""Dataset statistics from token sequences, so real, synthetic and generated sets compare alike.

Per split: pitch, velocity, duration, inter-onset and note-density distributions, tokens per
piece, form and style balance. `save_statistics` writes a JSON summary and PNG plots that
overlay the splits of one set, or the sets of a comparison (e.g. real against generated).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from staria.data.labels import STYLE_KEYS, PieceLabels, labels_path
from staria.evaluation.notes import sectioned_notes
from staria.tokenizer import (
    MidiReadError,
    MusicTokenizerWithStyle,
    Token,
    TokenTable,
    scan_midi_files,
)

ALL_SPLITS = "all"
UNSPLIT = "unsplit"
SUMMARY_FILE = "statistics.json"
# Histogram edges: exact integer bins for MIDI values, log-spaced bins for times (ms) because
# musically meaningful durations span 10 ms grace notes to 5 s held chords.
HISTOGRAM_EDGES = {
    "pitch": np.arange(0, 129),
    "velocity": np.arange(0, 129),
    "duration_ms": np.concatenate([[0], np.geomspace(10, 5000, 28)]),
    "inter_onset_ms": np.concatenate([[0], np.geomspace(10, 10000, 31)]),
    "note_density": np.linspace(0, 40, 41),
    "tokens_per_piece": np.linspace(0, 4096, 33),
}
LOG_X_AXES = ("duration_ms", "inter_onset_ms")
AXIS_LABELS = {
    "pitch": "MIDI pitch",
    "velocity": "velocity",
    "duration_ms": "duration (ms)",
    "inter_onset_ms": "inter-onset interval (ms)",
    "note_density": "notes per second (per piece)",
    "tokens_per_piece": "tokens per piece",
}


@dataclass(frozen=True)
class StatisticsPiece:
    """One sequence to describe: tokens (or their ids) plus labels when known."""

    name: str
    tokens: Sequence[Token] | Sequence[int] | np.ndarray
    labels: PieceLabels | None = None


@dataclass(frozen=True)
class SplitStatistics:
    """Raw per-note and per-piece values of one split; histograms and summaries derive from them.

    Drum hits are left out (see `staria.evaluation.notes`). Inter-onset intervals are gaps between
    distinct onsets (a chord counts once); note density is notes per second from a piece's
    first onset to its last note end.
    """

    pitch: np.ndarray
    velocity: np.ndarray
    duration_ms: np.ndarray
    inter_onset_ms: np.ndarray
    note_density: np.ndarray
    tokens_per_piece: np.ndarray
    forms: Counter
    styles: dict[str, Counter]

    @property
    def pieces(self) -> int:
        return len(self.tokens_per_piece)

    def distribution(self, quantity: str) -> np.ndarray:
        return getattr(self, quantity)

    def summary(self) -> dict:
        record: dict = {"pieces": self.pieces, "notes": len(self.pitch)}
        for quantity, edges in HISTOGRAM_EDGES.items():
            values = self.distribution(quantity)
            record[quantity] = _describe(values) | {
                "histogram": {
                    "edges": np.round(edges, 3).tolist(),
                    "counts": np.histogram(values, edges)[0].tolist(),
                }
            }
        record["forms"] = dict(sorted(self.forms.items()))
        record["styles"] = {
            key: dict(sorted(counts.items())) for key, counts in self.styles.items()
        }
        return record


@dataclass(frozen=True)
class DatasetStatistics:
    """Statistics per split (labels' split, `unsplit` without one) plus `all` pooled."""

    splits: dict[str, SplitStatistics]
    skipped: tuple[tuple[str, str], ...] = field(default=())

    def summary(self) -> dict:
        return {
            "splits": {name: split.summary() for name, split in self.splits.items()},
            "skipped": [{"file": path, "reason": reason} for path, reason in self.skipped],
        }


def compute_statistics(
    pieces: Sequence[StatisticsPiece],
    tokenizer: MusicTokenizerWithStyle | None = None,
    skipped: Sequence[tuple[str, str]] = (),
) -> DatasetStatistics:
    """Decode every piece's notes from its tokens and pool the values per split."""
    tokenizer = tokenizer or MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)
    groups: dict[str, list[StatisticsPiece]] = {}
    for piece in pieces:
        split = piece.labels.split if piece.labels and piece.labels.split else UNSPLIT
        groups.setdefault(split, []).append(piece)
    splits = {
        name: _split_statistics(group, tokenizer, table) for name, group in sorted(groups.items())
    }
    splits[ALL_SPLITS] = _split_statistics(list(pieces), tokenizer, table)
    return DatasetStatistics(splits, tuple(skipped))


def _split_statistics(
    pieces: Sequence[StatisticsPiece], tokenizer: MusicTokenizerWithStyle, table: TokenTable
) -> SplitStatistics:
    values: dict[str, list[np.ndarray]] = {quantity: [] for quantity in HISTOGRAM_EDGES}
    forms: Counter = Counter()
    styles: dict[str, Counter] = {key: Counter() for key in STYLE_KEYS}
    for piece in pieces:
        ids = _token_ids(piece.tokens, tokenizer)
        notes = sectioned_notes(ids, table).notes
        values["pitch"].append(notes.pitch)
        values["velocity"].append(notes.velocity)
        values["duration_ms"].append(notes.end_ms - notes.start_ms)
        values["inter_onset_ms"].append(np.diff(np.unique(notes.start_ms)))
        span_s = (notes.end_ms.max() - notes.start_ms.min()) / 1000 if len(notes) else 0.0
        values["note_density"].append(np.array([len(notes) / span_s] if span_s > 0 else []))
        values["tokens_per_piece"].append(np.array([len(ids)]))
        if piece.labels is not None:
            forms[piece.labels.form] += 1
            for key, value in (piece.labels.style or {}).items():
                if value is not None:
                    styles[key][value] += 1
    pooled = {
        quantity: np.concatenate(parts) if parts else np.zeros(0)
        for quantity, parts in values.items()
    }
    return SplitStatistics(**pooled, forms=forms, styles=styles)


def _token_ids(
    tokens: Sequence[Token] | Sequence[int] | np.ndarray, tokenizer: MusicTokenizerWithStyle
) -> np.ndarray:
    if isinstance(tokens, np.ndarray) or all(
        isinstance(token, (int, np.integer)) for token in tokens
    ):
        return np.asarray(tokens, dtype=np.int64)
    return np.asarray(tokenizer.encode(list(tokens)), dtype=np.int64)


def _describe(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return dict.fromkeys(("mean", "std", "min", "p5", "median", "p95", "max"))
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "p5": float(p5),
        "median": float(median),
        "p95": float(p95),
        "max": float(np.max(values)),
    }


def load_pieces(
    folder: str | Path, tokenizer: MusicTokenizerWithStyle | None = None
) -> tuple[list[StatisticsPiece], list[tuple[str, str]]]:
    """Tokenize every MIDI file under `folder` with its labels JSON if present.

    Returns the pieces and the (file, reason) pairs of the files that could not be tokenized.
    """
    tokenizer = tokenizer or MusicTokenizerWithStyle()
    folder = Path(folder).resolve()
    pieces, skipped = [], []
    for path in scan_midi_files([folder]):
        name = path.relative_to(folder).as_posix()
        try:
            ids = tokenizer.tokenize_ids(path)
        except MidiReadError as error:
            skipped.append((name, error.reason))
            continue
        labels = PieceLabels.load(labels_path(path)) if labels_path(path).is_file() else None
        pieces.append(StatisticsPiece(name, ids, labels))
    return pieces, skipped


def save_statistics(sets: Mapping[str, DatasetStatistics], out_dir: str | Path) -> Path:
    """Write `statistics.json` and one PNG per quantity; returns the JSON path.

    With one set the plots overlay its splits; with several they overlay each set's `all`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(sets) == 1:
        (stats,) = sets.values()
        splits = {name: split for name, split in stats.splits.items() if name != ALL_SPLITS}
        named = splits if len(splits) > 1 else {ALL_SPLITS: stats.splits[ALL_SPLITS]}
    else:
        named = {name: stats.splits[ALL_SPLITS] for name, stats in sets.items()}
    for quantity in HISTOGRAM_EDGES:
        _plot_distribution(named, quantity, out_dir / f"{quantity}.png")
    _plot_counts({name: s.forms for name, s in named.items()}, "form", out_dir / "forms.png")
    for key in STYLE_KEYS:
        _plot_counts(
            {name: s.styles[key] for name, s in named.items()},
            f"style: {key}",
            out_dir / f"style_{key}.png",
        )
    summary_path = out_dir / SUMMARY_FILE
    summary = {name: stats.summary() for name, stats in sets.items()}
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary_path


def _plot_distribution(named: Mapping[str, SplitStatistics], quantity: str, path: Path) -> None:
    """Step histograms normalised to fractions, so sets of different sizes overlay fairly."""
    edges = HISTOGRAM_EDGES[quantity]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axis = figure.subplots()
    for name, stats in named.items():
        values = stats.distribution(quantity)
        counts = np.histogram(values, edges)[0].astype(np.float64)
        if counts.sum() > 0:
            counts /= counts.sum()
        axis.stairs(counts, edges, label=f"{name} (n={len(values)})")
    if quantity in LOG_X_AXES:
        axis.set_xscale("symlog", linthresh=10)
    axis.set_xlabel(AXIS_LABELS[quantity])
    axis.set_ylabel("fraction")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def _plot_counts(named: Mapping[str, Counter], what: str, path: Path) -> None:
    """Grouped bars of label balance; an empty chart still says there were no labels."""
    categories = sorted(set().union(*named.values()))
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axis = figure.subplots()
    width = 0.8 / max(len(named), 1)
    positions = np.arange(len(categories))
    for index, (name, counts) in enumerate(named.items()):
        axis.bar(positions + index * width, [counts[c] for c in categories], width, label=name)
    axis.set_xticks(positions + 0.4 - width / 2, categories, rotation=45, ha="right")
    axis.set_ylabel("pieces")
    axis.set_title(what if categories else f"{what}: no labels")
    if categories:
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
