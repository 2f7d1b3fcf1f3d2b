"""Anchors a model's loss is read against, fitted on the training pieces and scored on held-out
ones: what knowing the token grammar, and nothing else, is worth.

The kind-unigram anchor predicts each body token (everything after `<S>`) as
P(kind | previous token's kind) x P(token | kind): the grammar's transitions (a note is followed
by its onset, then its duration) and each kind's own frequencies, with add-one smoothing over the
vocabulary's ids of that kind. A model that beats it has learned more than the grammar.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from staria.data.cache import CachedSplit
from staria.tokenizer import MusicTokenizerWithStyle, TokenTable


def _bodies(pieces: Iterable[np.ndarray], start_id: int) -> Iterable[np.ndarray]:
    """Each piece's ids from its first `<S>` on (the `<S>` itself is context only)."""
    for ids in pieces:
        starts = np.flatnonzero(ids == start_id)
        if len(starts):
            yield ids[starts[0] :]


def kind_unigram_loss(
    train: Iterable[np.ndarray], held_out: Iterable[np.ndarray], table: TokenTable, start_id: int
) -> float:
    """Mean negative log-likelihood, nats per target token, of the `held_out` pieces' body
    tokens under the kind-unigram anchor fitted on the `train` pieces (id arrays)."""
    kinds = int(table.kind.max()) + 1
    kind_of = table.kind.astype(np.int64)
    transitions = np.ones((kinds, kinds))
    token_counts = np.ones(len(kind_of))
    for body in _bodies(train, start_id):
        np.add.at(transitions, (kind_of[body[:-1]], kind_of[body[1:]]), 1)
        np.add.at(token_counts, body[1:], 1)
    kind_totals = np.bincount(kind_of, weights=token_counts, minlength=kinds)
    log_token = np.log(token_counts) - np.log(kind_totals[kind_of])
    log_transition = np.log(transitions) - np.log(transitions.sum(axis=1, keepdims=True))
    total, count = 0.0, 0
    for body in _bodies(held_out, start_id):
        targets = body[1:]
        total -= float(
            (log_transition[kind_of[body[:-1]], kind_of[targets]] + log_token[targets]).sum()
        )
        count += len(targets)
    return total / count if count else math.nan


def split_anchor_loss(train: CachedSplit, held_out: CachedSplit) -> float:
    """`kind_unigram_loss` fitted on the `train` split's pieces, scored on `held_out`'s."""
    tokenizer = MusicTokenizerWithStyle()

    def pieces(split: CachedSplit) -> Iterable[np.ndarray]:
        return (split.tokens(i) for i in range(len(split)))

    table = TokenTable.from_tokenizer(tokenizer)
    return kind_unigram_loss(pieces(train), pieces(held_out), table, tokenizer.bos_id)
