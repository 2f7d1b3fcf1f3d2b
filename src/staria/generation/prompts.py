"""What a sample is conditioned on: snippets of a labelled piece, a target form, the decoder start.

A conditioning piece comes from a MIDI file with its labels JSON beside it, or from a piece of an
indexed data split; its snippets are cut exactly as the data module cuts them for training (the
section token, then the opening of the letter's first occurrence). The decoder starts with
`[instrument prefix, <FORM>, <S>, <A_SECTION>]`, the head of every labelled training sequence;
the decoder-only baseline reads `<PROMPT_START> snippets... <PROMPT_END>` before that start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from staria.data.labels import PieceLabels, labels_path
from staria.data.preprocess import CachedSplit, TokenLayout
from staria.midi_io import read_notes
from staria.tokenizer import FORMS, SECTION_LETTERS, MusicTokenizerWithStyle

PIANO_PREFIX = ("prefix", "instrument", "piano")


class PromptError(ValueError):
    """A conditioning source or target form that cannot make a prompt; names the source."""


@dataclass(frozen=True)
class ConditioningPiece:
    """A labelled piece to take snippets from: its decoder sequence and `(letter, start, end)`
    section spans (token indices of each occurrence's notes), plus its form and style labels."""

    source: str
    ids: np.ndarray
    sections: tuple[tuple[str, int, int], ...]
    form: str | None
    style: dict[str, str | None] | None


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


def piece_from_midi(path: str | Path, layout: TokenLayout) -> ConditioningPiece:
    """A MIDI file and its labels (`<name>.json` beside it) as the data index would store them."""
    path = Path(path)
    label_file = labels_path(path)
    if not label_file.is_file():
        raise PromptError(f"{path}: no section labels at {label_file} to cut snippets from")
    labels = PieceLabels.load(label_file)
    notes = read_notes(path)
    ids = layout.tokenizer.notes_to_ids(notes)
    sequence = layout.labelled_sequence(ids, notes.start_ms / 1000.0, labels)
    return ConditioningPiece(str(path), sequence.ids, sequence.sections, labels.form, labels.style)


def piece_from_split(split: CachedSplit, index: int, tokenizer: MusicTokenizerWithStyle):
    """Piece `index` of an indexed split; an unlabelled piece is one A section (as in training)."""
    if not 0 <= index < len(split):
        raise PromptError(f"{split.folder}: piece {index} out of range (0..{len(split) - 1})")
    record = split.pieces[index]
    ids = split.tokens(index)
    sections = record.sections
    if not sections:
        body_start = int(np.flatnonzero(ids == tokenizer.bos_id)[0]) + 1
        sections = (("A", body_start, len(ids) - int(ids[-1] == tokenizer.eos_id)),)
    source = f"{split.folder}#{index}"
    return ConditioningPiece(source, ids, sections, record.form, record.style)


def section_snippets(
    piece: ConditioningPiece, layout: TokenLayout, snippet_len: int, max_snippets: int
) -> tuple[np.ndarray, ...]:
    """Per form letter in first-appearance order: its section token and at most `snippet_len`
    tokens opening its first occurrence (`staria.data.datasets.PieceSource.snippets`)."""
    snippets: list[np.ndarray] = []
    seen: set[str] = set()
    for letter, start, end in piece.sections:
        if letter in seen or len(snippets) == max_snippets:
            continue
        seen.add(letter)
        opening = piece.ids[start : min(end, start + snippet_len)]
        snippets.append(np.concatenate([[layout.section_id[letter]], opening]).astype(np.int64))
    return tuple(snippets)


def instrument_prefix(ids: np.ndarray, tokenizer: MusicTokenizerWithStyle) -> np.ndarray:
    """The prefix tokens before `<S>` and the form token (instruments, as the tokenizer wrote)."""
    head = ids[: int(np.flatnonzero(ids == tokenizer.bos_id)[0])]
    form_ids = [tokenizer.token_to_id[tokenizer.form_token(form)] for form in FORMS]
    return head[~np.isin(head, form_ids)]


def conditioned_prompt(
    piece: ConditioningPiece,
    layout: TokenLayout,
    *,
    form: str | None,
    style_key: str,
    snippet_len: int,
    max_snippets: int,
    decoder_only: bool,
) -> Prompt:
    """Snippets of `piece` and the start of a piece in `form` (default: the piece's own form)."""
    tok = layout.tokenizer
    target = form or piece.form
    if target is None:
        raise PromptError(f"{piece.source}: the piece has no form label; set prompt.form")
    if target not in FORMS:
        raise PromptError(f"prompt.form={target!r} is not one of {FORMS}")
    snippets = section_snippets(piece, layout, snippet_len, max_snippets)
    start = np.concatenate(
        [
            instrument_prefix(piece.ids, tok),
            [tok.token_to_id[tok.form_token(target)], tok.bos_id],
            [layout.section_id[SECTION_LETTERS[0]]],
        ]
    ).astype(np.int64)
    model_prompt = start
    if decoder_only:
        block = [tok.token_to_id[tok.prompt_start], *snippets, tok.token_to_id[tok.prompt_end]]
        model_prompt = np.concatenate([np.hstack(block), start]).astype(np.int64)
    style = (piece.style or {}).get(style_key)
    return Prompt(piece.source, target, style, snippets, start, model_prompt)


def scratch_prompt(tokenizer: MusicTokenizerWithStyle) -> Prompt:
    """No snippets, no form: the piano prefix and `<S>`, as an unlabelled piano piece starts."""
    start = np.array([tokenizer.token_to_id[PIANO_PREFIX], tokenizer.bos_id], dtype=np.int64)
    return Prompt(None, None, None, (), start, start)
