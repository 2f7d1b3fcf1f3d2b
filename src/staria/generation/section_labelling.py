"""Wake: a trained section classifier labels real MIDI, writing the label files training reads.

The classifier (a `SequenceClassifier` trained on synthetic pieces whose sections are known)
gives every token a letter A-D. Each note takes the letter predicted at its first token; runs of
letters shorter than `min_section_notes` are merged into a neighbour, letters are renamed in
order of first appearance (so the piece opens with A), and runs are merged further until the
letters spell one of the tokenizer's forms. The result is a `PieceLabels` record
(`source="labelled"`) beside a link or copy of the MIDI file in a wake folder, which
`MidiDataModule(mode="real", folders=[wake folder])` then reads like any labelled piece.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from staria.data.labels import PieceLabels, Section, labels_path
from staria.data.sequences import TokenLayout
from staria.generation.judge import ClassifierJudge
from staria.tokenizer import (
    FORMS,
    SECTION_LETTERS,
    MidiReadError,
    MusicTokenizerWithStyle,
    read_notes,
    scan_midi_files,
)

log = logging.getLogger(__name__)

# (tokens [1, T] long, token_mask [1, T] bool) -> section logits [1, T, 4]
SectionPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LABELLING_REPORT = "labelling.json"


class LabellingError(ValueError):
    """A piece the labeller cannot label (no notes); names the file."""


@dataclass(frozen=True)
class LabelledRuns:
    """Maximal runs of notes with one letter; `letters[i]` covers notes `[starts[i], ends[i])`."""

    letters: str
    starts: np.ndarray
    ends: np.ndarray


def runs_of(letters: Sequence[str]) -> LabelledRuns:
    """Split a per-note letter sequence into maximal runs of equal letters."""
    values = np.asarray(letters)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    return LabelledRuns("".join(values[starts]), starts, ends)


def canonical_letters(letters: str) -> str:
    """Rename letters in order of first appearance: "BAB" -> "ABA", "CCA" -> "AAB"."""
    names: dict[str, str] = {}
    for letter in letters:
        names.setdefault(letter, SECTION_LETTERS[len(names) % len(SECTION_LETTERS)])
    return "".join(names[letter] for letter in letters)


def _merge_run(note_letters: np.ndarray, runs: LabelledRuns, index: int) -> np.ndarray:
    """Give run `index` the letter of its longer neighbour."""
    lengths = runs.ends - runs.starts
    left = index - 1 if index > 0 else None
    right = index + 1 if index + 1 < len(lengths) else None
    if left is None or (right is not None and lengths[right] > lengths[left]):
        neighbour = right
    else:
        neighbour = left
    merged = note_letters.copy()
    merged[runs.starts[index] : runs.ends[index]] = runs.letters[neighbour]
    return merged


def smooth_note_letters(note_letters: Sequence[str], min_section_notes: int) -> np.ndarray:
    """Per-note letters whose runs are at least `min_section_notes` long (unless only one run is
    left) and whose run letters, renamed in order of appearance, spell a form in `FORMS`."""
    if len(note_letters) == 0:
        raise LabellingError("no notes to label")
    letters = np.asarray(note_letters, dtype="<U1")
    while True:
        runs = runs_of(letters)
        mapping = dict(zip(runs.letters, canonical_letters(runs.letters), strict=False))
        letters = np.array([mapping[letter] for letter in letters], dtype="<U1")
        runs = runs_of(letters)
        lengths = runs.ends - runs.starts
        if len(lengths) == 1:
            return letters
        shortest = int(np.argmin(lengths))
        if lengths[shortest] >= min_section_notes and runs.letters in FORMS:
            return letters
        letters = _merge_run(letters, runs, shortest)


def labels_from_note_letters(
    note_letters: Sequence[str], onset_s: np.ndarray, end_s: np.ndarray
) -> PieceLabels:
    """Sections from smoothed per-note letters (notes in onset order); times in seconds.

    A section starts at its first note's onset (the first at 0) and ends where the next starts;
    the last ends after the piece's last note end, so every onset lies in a section.
    """
    runs = runs_of(note_letters)
    starts = [0.0, *(float(onset_s[i]) for i in runs.starts[1:])]
    ends = [*starts[1:], float(max(end_s.max(), onset_s.max()) + 1.0)]
    sections = tuple(
        Section(letter, start, end)
        for letter, start, end in zip(runs.letters, starts, ends, strict=True)
    )
    return PieceLabels(
        form=runs.letters, sections=sections, style=None, source="labelled", seed=0, split=None
    )


class SectionLabeller:
    """Labels MIDI files with a section predictor, window by window over long pieces."""

    def __init__(
        self,
        predict: SectionPredictor,
        window_tokens: int = 512,
        min_section_notes: int = 16,
        tokenizer: MusicTokenizerWithStyle | None = None,
    ) -> None:
        self.predict = predict
        self.window_tokens = window_tokens
        self.min_section_notes = min_section_notes
        self.layout = TokenLayout(tokenizer or MusicTokenizerWithStyle())

    def token_letters(self, ids: np.ndarray) -> np.ndarray:
        """Predicted section index of every token; the prefix through `<S>` leads every window."""
        tok = self.layout.tokenizer
        head_len = tok.body_start(ids)
        body_len = max(1, self.window_tokens - head_len)
        letters = np.zeros(len(ids), dtype=np.int64)
        for start in range(head_len, max(len(ids), head_len + 1), body_len):
            positions = np.r_[
                np.arange(head_len), np.arange(start, min(len(ids), start + body_len))
            ]
            tokens = torch.from_numpy(ids[positions]).long()[None]
            with torch.no_grad():
                logits = self.predict(tokens, torch.ones_like(tokens, dtype=torch.bool))
            letters[positions] = logits[0].argmax(dim=-1).numpy()
        return letters

    def label(self, midi_path: str | Path) -> PieceLabels:
        """The labels of one file; raises `MidiReadError` or `LabellingError`."""
        notes = read_notes(Path(midi_path).read_bytes())
        ids = self.layout.tokenizer.notes_to_ids(notes)
        body_start = self.layout.tokenizer.body_start(ids)
        note_pos = body_start + np.flatnonzero(self.layout.note_length[ids[body_start:]] > 0)
        if len(note_pos) == 0 or len(note_pos) != len(notes):
            raise LabellingError(f"{midi_path}: {len(note_pos)} note tokens, {len(notes)} notes")
        predicted = self.token_letters(ids)[note_pos]
        order = np.argsort(notes.start_ms, kind="stable")
        onsets = notes.start_ms[order]
        # Notes sounding together share the letter of the first, so sections start at onsets.
        chord_first = np.searchsorted(onsets, onsets, side="left")
        note_letters = np.array(SECTION_LETTERS)[predicted[order][chord_first]]
        smoothed = smooth_note_letters(note_letters, self.min_section_notes)
        return labels_from_note_letters(smoothed, onsets / 1000.0, notes.end_ms[order] / 1000.0)

    def label_folder(self, sources: Sequence[str | Path], out_dir: str | Path) -> Path:
        """Label every MIDI file under `sources` into `out_dir` (file + labels JSON, the same
        relative paths); unreadable files are listed in `labelling.json`, written last."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        roots = [Path(source).resolve() for source in sources]
        labelled, skipped = [], []
        for path in scan_midi_files(roots):
            target = out_dir / _relative_name(path, roots)
            try:
                labels = self.label(path)
            except (MidiReadError, LabellingError, OSError) as error:
                skipped.append({"path": str(path), "reason": f"{type(error).__name__}: {error}"})
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, target)
            labels.save(labels_path(target))
            labelled.append({"path": str(target), "source": str(path), "form": labels.form})
        report = out_dir / LABELLING_REPORT
        report.write_text(json.dumps({"labelled": labelled, "skipped": skipped}, indent=1) + "\n")
        log.info("labelled %d files into %s (%d skipped)", len(labelled), out_dir, len(skipped))
        return report


def _relative_name(path: Path, roots: Sequence[Path]) -> Path:
    """`<root folder name>/<path inside it>`, so equal names in two sources stay apart."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return Path(root.name) / path.relative_to(root)
    return Path(path.name)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy of large corpora; the index resolves symlinks back to the source,
    where no labels lie), or a copy across file systems."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def classifier_labeller(checkpoint: str | Path, **settings) -> SectionLabeller:
    """The labeller of a trained classifier run (`ClassifierJudge`'s section head), in windows of
    what the classifier reads; `settings` go to `SectionLabeller` (e.g. `min_section_notes`)."""
    judge = ClassifierJudge(checkpoint)
    return SectionLabeller(judge.section_logits, window_tokens=judge.max_len, **settings)
