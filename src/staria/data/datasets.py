"""Per-task views of a cached split: what one training example is for each task.

Items are dicts of numpy arrays (and scalars) that `staria.data.collate.Collator` pads into
the batch contract of docs/architecture.md. Randomness (crop windows, snippet choice,
augmentation) is drawn from a generator seeded by `(seed, index)`, so an item is the same on
every run, worker and rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from staria.data.cache import NO_SECTION, CachedSplit, PieceRecord
from staria.data.sequences import TokenLayout
from staria.tokenizer import (
    COMPOSERS,
    FORMS,
    GENRES,
    PIECE_FORMS,
    SECTION_LETTERS,
    MusicTokenizerWithStyle,
)

IGNORE_INDEX = -100
STYLE_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "composer": COMPOSERS,
    "form": PIECE_FORMS,
    "genre": GENRES,
}
MAX_SECTIONS = len(SECTION_LETTERS)

Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class SnippetAugmenter:
    """Random pitch shift, velocity shift and tempo stretch of a snippet (section token + notes),
    through the tokenizer's augmentations; the section token stays in front."""

    tokenizer: MusicTokenizerWithStyle
    max_pitch_shift: int = 5
    max_velocity_steps: int = 2
    max_tempo_change: float = 0.2

    def __call__(self, snippet: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        tok = self.tokenizer
        shift = int(rng.integers(-self.max_pitch_shift, self.max_pitch_shift + 1))
        ids = tok.augment_pitch_ids(snippet[1:].astype(np.int64), shift)
        steps = int(rng.integers(-self.max_velocity_steps, self.max_velocity_steps + 1))
        ids = tok.augment_velocity_ids(ids, steps)
        notes = tok.ids_to_notes(ids)
        if len(notes) == 0:
            return np.concatenate([snippet[:1], ids])
        factor = float(rng.uniform(1 - self.max_tempo_change, 1 + self.max_tempo_change))
        # The stretch rebuilds a whole piece (prefix, <S>, notes); keep only the notes.
        stretched = tok.augment_tempo_ids(ids, factor)
        body = stretched[tok.body_start(stretched) :]
        return np.concatenate([snippet[:1], body])


@dataclass(frozen=True)
class SequenceSettings:
    """Lengths every task shares; a snippet is a section token plus up to `snippet_len` tokens."""

    snippet_len: int = 256
    max_snippets: int = 4
    max_seq_len: int = 4096


class PieceSource:
    """A cached split plus the token ids and lookups the tasks need to cut it up."""

    def __init__(self, split: CachedSplit, layout: TokenLayout) -> None:
        self.split = split
        self.layout = layout
        tok = layout.tokenizer
        self.bos_id, self.eos_id, self.pad_id = tok.bos_id, tok.eos_id, tok.pad_id
        self.prompt_start_id = tok.token_to_id[tok.prompt_start]
        self.prompt_end_id = tok.token_to_id[tok.prompt_end]
        self.structure_ids = np.array(tok.structure_token_ids)

    def __len__(self) -> int:
        return len(self.split)

    def record(self, piece: int) -> PieceRecord:
        return self.split.pieces[piece]

    def sections(self, piece: int, ids: np.ndarray) -> tuple[tuple[str, int, int], ...]:
        """The piece's `(letter, start, end)` spans (`piece_sections`)."""
        return piece_sections(ids, self.record(piece).sections, self.layout.tokenizer)

    def note_starts(self, ids: np.ndarray, low: int, high: int) -> np.ndarray:
        """Positions in `[low, high)` where a note begins: the only clean places to cut."""
        return low + np.flatnonzero(self.layout.note_length[ids[low:high]] > 0)

    def window_start(self, ids: np.ndarray, low: int, high: int, length: int, rng) -> int:
        """Start of a `length`-token window inside `[low, high)`, at a random note start."""
        if high - low <= length:
            return low
        starts = self.note_starts(ids, low, high - length + 1)
        return int(rng.choice(starts)) if len(starts) else int(rng.integers(low, high - length + 1))

    def window(self, ids: np.ndarray, low: int, high: int, length: int, rng) -> np.ndarray:
        start = self.window_start(ids, low, high, length, rng)
        return ids[start : min(high, start + length)]

    def crop_positions(self, ids: np.ndarray, max_len: int, rng) -> np.ndarray:
        """Positions of at most `max_len` tokens: the prefix through `<S>` plus a random window."""
        if len(ids) <= max_len:
            return np.arange(len(ids))
        head = self.layout.tokenizer.body_start(ids)
        start = self.window_start(ids, head, len(ids), max_len - head, rng)
        return np.concatenate([np.arange(head), np.arange(start, start + max_len - head)])

    def snippets(self, piece: int, ids: np.ndarray, settings: SequenceSettings) -> list[np.ndarray]:
        """The piece's snippets (`section_snippets`)."""
        return section_snippets(ids, self.sections(piece, ids), self.layout, settings)


def piece_sections(
    ids: np.ndarray, labelled: Sequence[tuple[str, int, int]], tokenizer: MusicTokenizerWithStyle
) -> tuple[tuple[str, int, int], ...]:
    """A piece's `(letter, start, end)` token spans: `labelled` when there are any, else one A
    section from after `<S>` to before `<E>`.

    Treating unlabelled music as a single A section lets real MIDI without form labels train
    the generative models (its opening becomes the one snippet) and contrastive views, and
    prompt generation the same way.
    """
    if labelled:
        return tuple(labelled)
    end = len(ids) - int(ids[-1] == tokenizer.eos_id)
    return (("A", tokenizer.body_start(ids), end),)


def section_snippets(
    ids: np.ndarray,
    sections: Sequence[tuple[str, int, int]],
    layout: TokenLayout,
    settings: SequenceSettings,
) -> list[np.ndarray]:
    """For each form letter of `sections` (`(letter, start, end)` token spans of `ids`, in
    first-appearance order, at most `max_snippets`): its section token and the opening of its
    first occurrence, at most `snippet_len` tokens (int64). Training examples and generation
    prompts are both cut here."""
    snippets, seen = [], set()
    for letter, start, end in sections:
        if letter in seen or len(snippets) == settings.max_snippets:
            continue
        seen.add(letter)
        opening = ids[start : min(end, start + settings.snippet_len)]
        snippets.append(np.concatenate([[layout.section_id[letter]], opening]).astype(np.int64))
    return snippets


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


GENERATIVE_LAYOUTS = ("staria", "baseline", "unconditional")


class GenerativeDataset(Dataset):
    """Decoder targets with their section snippets (`staria`), one stream of snippet prompt and
    sequence (`baseline`), or the sequence alone (`unconditional`: the no-snippet control)."""

    def __init__(
        self, source: PieceSource, settings: SequenceSettings, model_kind: str, seed: int = 0
    ) -> None:
        if model_kind not in GENERATIVE_LAYOUTS:
            raise ValueError(f"model_kind {model_kind!r} is not one of {GENERATIVE_LAYOUTS}")
        self.source, self.settings, self.model_kind, self.seed = source, settings, model_kind, seed

    def __len__(self) -> int:
        return len(self.source)

    @property
    def lengths(self) -> np.ndarray:
        lengths = np.minimum(self.source.split.lengths, self.settings.max_seq_len)
        if self.model_kind == "baseline":
            lengths = lengths + 2 + self.settings.max_snippets * (self.settings.snippet_len + 1)
        return lengths

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def positions(self, index: int, ids: np.ndarray | None = None) -> np.ndarray:
        """Where piece `index`'s training sequence comes from in its token ids `ids` (read
        when not given): its crop."""
        ids = self.source.split.tokens(index) if ids is None else ids
        return self.source.crop_positions(ids, self.settings.max_seq_len, _rng(self.seed, index))

    def item(self, index: int, snippets_from: int | None = None) -> dict:
        """Piece `index`'s example, conditioned on the snippets of piece `snippets_from`
        (default: its own; another piece's for the snippet information gain)."""
        source = self.source
        ids = source.split.tokens(index)
        donor = index if snippets_from is None else snippets_from
        donor_ids = ids if donor == index else source.split.tokens(donor)
        snippets = source.snippets(donor, donor_ids, self.settings)
        sequence = ids[self.positions(index, ids)]
        if self.model_kind != "baseline":
            loss_mask = np.ones(len(sequence), dtype=bool)
            loss_mask[0] = False
            if self.model_kind == "unconditional":
                return {"tokens": sequence, "loss_mask": loss_mask}
            return {"snippets": snippets, "tokens": sequence, "loss_mask": loss_mask}
        prompt = np.concatenate([[source.prompt_start_id], *snippets, [source.prompt_end_id]])
        stream = np.concatenate([prompt, sequence])
        loss_mask = np.arange(len(stream)) >= len(prompt)
        return {"tokens": stream, "loss_mask": loss_mask}


class ContrastiveDataset(Dataset):
    """One item per (piece, section letter): two augmented snippets of that section.

    Each view is a random window of a randomly chosen occurrence of the letter, so the
    repeats of a section in ABA-like forms become positives of each other.
    """

    def __init__(
        self,
        source: PieceSource,
        settings: SequenceSettings,
        augment: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.source, self.settings, self.augment, self.seed = source, settings, augment, seed
        self.items = [
            (piece, letter)
            for piece in range(len(source))
            for letter in dict.fromkeys(s[0] for s in source.record(piece).sections or [("A",)])
        ]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.full(len(self.items), self.settings.snippet_len + 1)

    def _view(
        self, ids: np.ndarray, spans: list[tuple[str, int, int]], letter: str, rng
    ) -> np.ndarray:
        _, start, end = spans[int(rng.integers(len(spans)))]
        body = self.source.window(ids, start, end, self.settings.snippet_len, rng)
        view = np.concatenate([[self.source.layout.section_id[letter]], body])
        return self.augment(view, rng) if self.augment else view

    def __getitem__(self, index: int) -> dict:
        piece, letter = self.items[index]
        ids = self.source.split.tokens(piece)
        spans = [s for s in self.source.sections(piece, ids) if s[0] == letter]
        rng = _rng(self.seed, index)
        return {
            "view_a": self._view(ids, spans, letter, rng),
            "view_b": self._view(ids, spans, letter, rng),
            "group": piece * MAX_SECTIONS + SECTION_LETTERS.index(letter),
        }


class ClassificationDataset(Dataset):
    """A piece (or a random snippet of it) with form, style and per-token section labels.

    Form and section tokens are removed from the input: they would state the answer.
    """

    def __init__(
        self,
        source: PieceSource,
        settings: SequenceSettings,
        unit: str = "piece",
        style_key: str = "composer",
        seed: int = 0,
    ) -> None:
        if unit not in ("piece", "snippet"):
            raise ValueError(f"classification unit {unit!r} is not 'piece' or 'snippet'")
        if style_key not in STYLE_VOCABULARIES:
            raise ValueError(f"style_key {style_key!r} is not one of {tuple(STYLE_VOCABULARIES)}")
        self.source, self.settings, self.unit, self.seed = source, settings, unit, seed
        self.style_key = style_key

    def __len__(self) -> int:
        return len(self.source)

    @property
    def lengths(self) -> np.ndarray:
        limit = self.settings.snippet_len if self.unit == "snippet" else self.settings.max_seq_len
        return np.minimum(self.source.split.lengths, limit)

    def form_label(self, record: PieceRecord) -> int:
        return FORMS.index(record.form) if record.form is not None else IGNORE_INDEX

    def style_label(self, record: PieceRecord) -> int:
        value = (record.style or {}).get(self.style_key)
        vocabulary = STYLE_VOCABULARIES[self.style_key]
        return vocabulary.index(value) if value in vocabulary else IGNORE_INDEX

    def __getitem__(self, index: int) -> dict:
        source = self.source
        ids = source.split.tokens(index)
        keep = ~np.isin(ids, source.structure_ids)
        ids, section_ids = ids[keep], source.split.section_ids(index)[keep].astype(np.int64)
        section_ids[section_ids == NO_SECTION] = IGNORE_INDEX
        rng = _rng(self.seed, index)
        if self.unit == "snippet":
            start = source.window_start(ids, 0, len(ids), self.settings.snippet_len, rng)
            positions = np.arange(start, min(len(ids), start + self.settings.snippet_len))
        else:
            positions = source.crop_positions(ids, self.settings.max_seq_len, rng)
        record = source.record(index)
        return {
            "tokens": ids[positions],
            "section_labels": section_ids[positions],
            "form_label": self.form_label(record),
            "style_label": self.style_label(record),
        }
