"""What a sample is conditioned on: snippets of a piece, a target form, the decoder start.

A conditioning piece comes from any MIDI file or from a piece of an indexed data split. Its
sections come, in this order, from the section labeller (`prompt.labeller`, the wake-sleep
classifier), from time windows (`prompt.windows`, one letter each), from the labels JSON beside
the file, or else the piece is one A section, exactly as training reads an unlabelled piece.
Snippets are cut by the same function as training examples (`data.datasets.section_snippets`).

The decoder start matches how the checkpoint was trained (`structure`): `labelled` data gives
`[instrument prefix, <FORM>, <S>, <A_SECTION>]`, the head of every labelled training sequence;
`plain` (unlabelled real MIDI) gives `[instrument prefix, <S>]`, with no form or section token
the model never saw. Either may continue the piece's first `continue_s` seconds. The
decoder-only baseline reads `<PROMPT_START> snippets... <PROMPT_END>` before that start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from staria.data.cache import CachedSplit
from staria.data.datasets import SequenceSettings, piece_sections, section_snippets
from staria.data.labels import LabelFormatError, PieceLabels, Section, labels_path
from staria.data.sequences import TokenLayout
from staria.tokenizer import (
    FORMS,
    SECTION_LETTERS,
    MidiReadError,
    MusicTokenizerWithStyle,
    read_notes,
)

PIANO_PREFIX = ("prefix", "instrument", "piano")
STRUCTURES = ("labelled", "plain")
# A MIDI file -> its section labels (the wake-sleep labeller: generation.section_labelling).
Labeller = Callable[[Path], PieceLabels]


class PromptError(ValueError):
    """A conditioning source or target form that cannot make a prompt; names the source."""


@dataclass(frozen=True)
class ConditioningPiece:
    """A piece to take snippets from: its decoder sequence (section tokens inserted when it
    has sections) and `(letter, start, end)` section spans (token indices of each occurrence's
    notes), its form and style labels (None when unlabelled), and where its sections came from."""

    source: str
    ids: np.ndarray
    sections: tuple[tuple[str, int, int], ...]
    form: str | None
    style: dict[str, str | None] | None
    sections_from: str = "labels"


@dataclass(frozen=True)
class Prompt:
    """Everything one sample starts from. `snippets` are empty when generating from scratch;
    `model_prompt` is what the model reads before sampling (for the baseline, the snippet block
    followed by `decoder_start`)."""

    source: str | None
    form: str | None
    style: str | None
    snippets: tuple[np.ndarray, ...]
    decoder_start: np.ndarray
    model_prompt: np.ndarray
    sections_from: str | None = None
    continue_s: float = 0.0


def labels_from_windows(windows: Sequence[Sequence[float]]) -> PieceLabels:
    """One section per `[start_s, end_s]` window, lettered A, B, C, D in order (`PromptError`
    naming `prompt.windows` unless they are 1-4 increasing, non-overlapping windows)."""
    if not 1 <= len(windows) <= len(SECTION_LETTERS):
        raise PromptError(f"prompt.windows: give 1 to 4 [start_s, end_s] windows, not {windows}")
    letters = "".join(SECTION_LETTERS[: len(windows)])
    try:
        if any(len(window) != 2 for window in windows):
            raise ValueError("each window is [start_s, end_s]")
        return PieceLabels(
            form=letters,
            sections=tuple(
                Section(letter, float(start), float(end))
                for letter, (start, end) in zip(letters, windows, strict=True)
            ),
            source="labelled",
        )
    except (LabelFormatError, TypeError, ValueError) as error:
        raise PromptError(
            f"prompt.windows={windows}: {error} (give [[start_s, end_s], ...], in order, "
            "not overlapping)"
        ) from None


def piece_from_midi(
    path: str | Path,
    layout: TokenLayout,
    windows: Sequence[Sequence[float]] | None = None,
    labeller: Labeller | None = None,
) -> ConditioningPiece:
    """Any MIDI file as a conditioning piece; its sections from `labeller`, else `windows`,
    else the labels JSON beside it, else one A section (the whole piece, as training reads an
    unlabelled one). `PromptError` names the file when it cannot be read or labelled."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt.midi: {path} is not a file")
    try:
        notes = read_notes(path)
        ids = layout.tokenizer.notes_to_ids(notes)
        if labeller is not None:
            labels, sections_from = labeller(path), "labeller"
        elif windows:
            labels, sections_from = labels_from_windows(windows), "windows"
        elif labels_path(path).is_file():
            labels, sections_from = PieceLabels.load(labels_path(path)), "labels"
        else:
            sections = piece_sections(ids, (), layout.tokenizer)
            return ConditioningPiece(str(path), ids, sections, None, None, "whole")
        sequence = layout.labelled_sequence(ids, notes.start_ms / 1000.0, labels)
    except PromptError:
        raise
    except (MidiReadError, ValueError) as error:
        raise PromptError(f"{path}: {error}") from None
    return ConditioningPiece(
        str(path), sequence.ids, sequence.sections, labels.form, labels.style, sections_from
    )


def piece_from_split(split: CachedSplit, index: int, tokenizer: MusicTokenizerWithStyle):
    """Piece `index` of an indexed split; an unlabelled piece is one A section (as in training).
    The source names the piece's MIDI file and its place in the split."""
    if not 0 <= index < len(split):
        raise PromptError(f"{split.folder}: piece {index} out of range (0..{len(split) - 1})")
    record = split.pieces[index]
    ids = split.tokens(index)
    sections = piece_sections(ids, record.sections, tokenizer)
    sections_from = "labels" if record.sections else "whole"
    source = f"{record.path} (piece {index} of {split.folder})"
    return ConditioningPiece(source, ids, sections, record.form, record.style, sections_from)


def instrument_prefix(ids: np.ndarray, tokenizer: MusicTokenizerWithStyle) -> np.ndarray:
    """The prefix tokens before `<S>` and the form token (instruments, as the tokenizer wrote)."""
    head = ids[: tokenizer.body_start(ids) - 1]
    form_ids = [tokenizer.token_to_id[tokenizer.form_token(form)] for form in FORMS]
    return head[~np.isin(head, form_ids)]


def opening_body(piece: ConditioningPiece, layout: TokenLayout, continue_s: float) -> np.ndarray:
    """The tokens after `<S>` through the last note starting within `continue_s` seconds of the
    piece's first note (section tokens included where the piece has them)."""
    tok = layout.tokenizer
    body_start = tok.body_start(piece.ids)
    if continue_s <= 0:
        return piece.ids[body_start:body_start]
    notes = tok.ids_to_notes(piece.ids)
    count = int(np.count_nonzero(notes.start_ms < continue_s * 1000.0))
    body = piece.ids[body_start:]
    note_at = np.flatnonzero(layout.note_length[body] > 0)
    if count == 0 or len(note_at) == 0:
        return body[:0]
    last = note_at[min(count, len(note_at)) - 1]
    return body[: last + layout.note_length[body[last]]]


def decoder_start(
    piece: ConditioningPiece,
    layout: TokenLayout,
    *,
    form: str | None,
    structure: str,
    continue_s: float = 0.0,
) -> np.ndarray:
    """The decoder's first tokens for a sample conditioned on `piece` (module docstring)."""
    tok = layout.tokenizer
    prefix = instrument_prefix(piece.ids, tok)
    body = opening_body(piece, layout, continue_s)
    structure_ids = [*layout.section_id.values()]
    if structure == "plain":
        body = body[~np.isin(body, structure_ids)]
        return np.concatenate([prefix, [tok.bos_id], body]).astype(np.int64)
    if not len(body) or body[0] not in structure_ids:
        body = np.concatenate([[layout.section_id[SECTION_LETTERS[0]]], body])
    head = [tok.token_to_id[tok.form_token(form)], tok.bos_id]
    return np.concatenate([prefix, head, body]).astype(np.int64)


def conditioned_prompt(
    piece: ConditioningPiece,
    layout: TokenLayout,
    *,
    form: str | None,
    structure: str,
    style_key: str,
    sequence: SequenceSettings,
    decoder_only: bool,
    continue_s: float = 0.0,
) -> Prompt:
    """Snippets of `piece` and the start of a sample: with `structure="labelled"` a piece in
    `form` (default: the piece's own form); with `"plain"` no form (a form is refused)."""
    tok = layout.tokenizer
    if structure not in STRUCTURES:
        raise PromptError(f"prompt.structure={structure!r} is not one of {STRUCTURES}")
    if continue_s < 0:
        raise PromptError(f"prompt.continue_s={continue_s} must be >= 0")
    target = None
    if structure == "labelled":
        target = form or piece.form
        if target is None:
            raise PromptError(
                f"{piece.source}: the piece has no form label and the checkpoint was trained "
                "on form-labelled pieces; set prompt.form, prompt.windows or prompt.labeller"
            )
        if target not in FORMS:
            raise PromptError(f"prompt.form={target!r} is not one of {FORMS}")
    elif form is not None:
        raise PromptError(
            f"prompt.form={form!r}: a plain start has no form token (prompt.structure=plain, "
            "or a checkpoint trained on unlabelled pieces); drop prompt.form, or use "
            "prompt.structure=labelled"
        )
    snippets = tuple(section_snippets(piece.ids, piece.sections, layout, sequence))
    start = decoder_start(piece, layout, form=target, structure=structure, continue_s=continue_s)
    model_prompt = start
    if decoder_only:
        block = [tok.token_to_id[tok.prompt_start], *snippets, tok.token_to_id[tok.prompt_end]]
        model_prompt = np.concatenate([np.hstack(block), start]).astype(np.int64)
    style = (piece.style or {}).get(style_key)
    return Prompt(
        piece.source, target, style, snippets, start, model_prompt, piece.sections_from, continue_s
    )


def scratch_prompt(tokenizer: MusicTokenizerWithStyle) -> Prompt:
    """No snippets, no form: the piano prefix and `<S>`, as an unlabelled piano piece starts."""
    start = np.array([tokenizer.token_to_id[PIANO_PREFIX], tokenizer.bos_id], dtype=np.int64)
    return Prompt(None, None, None, (), start, start)
