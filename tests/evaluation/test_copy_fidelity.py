"""Copy fidelity by hand: an exact return scores 1 wherever it starts, a changed note costs its
share of the F1, another piece's material scores what the two share."""

from __future__ import annotations

import pytest

from staria.evaluation.copy_fidelity import (
    chance_fidelities,
    copy_fidelity_metrics,
    return_fidelities,
)
from staria.evaluation.notes import sectioned_notes
from staria.tokenizer import TokenTable
from tests.evaluation.test_structure_metrics import A_NOTES, B_NOTES, sequence_ids


@pytest.fixture(scope="module")
def table(tokenizer) -> TokenTable:
    return TokenTable.from_tokenizer(tokenizer)


def piece(tokenizer, table, sections):
    return sectioned_notes(sequence_ids(tokenizer, sections), table)


def test_an_exact_return_scores_one_though_it_starts_later(tokenizer, table):
    aba = piece(tokenizer, table, [("A", A_NOTES), ("B", B_NOTES), ("A", A_NOTES)])
    assert return_fidelities(aba) == [1.0]


def test_a_changed_note_costs_its_share(tokenizer, table):
    changed = [(60, 0, 500), (64, 500, 500), (69, 1000, 500)]  # last pitch 67 -> 69
    aba = piece(tokenizer, table, [("A", A_NOTES), ("B", B_NOTES), ("A", changed)])
    assert return_fidelities(aba) == [pytest.approx(2 * 2 / 6)]


def test_a_shorter_return_is_compared_over_the_span_both_cover(tokenizer, table):
    short = A_NOTES[:2]  # 0-1000 ms: the first occurrence's third note starts at 1000 ms
    aa = piece(tokenizer, table, [("A", A_NOTES), ("A", short)])
    assert return_fidelities(aa) == [pytest.approx(2 * 2 / 5)]


def test_chance_pairs_returns_with_another_pieces_letter(tokenizer, table):
    aba = piece(tokenizer, table, [("A", A_NOTES), ("B", B_NOTES), ("A", A_NOTES)])
    bab = piece(tokenizer, table, [("A", B_NOTES), ("B", A_NOTES), ("A", B_NOTES)])
    # aba's return (A_NOTES) against bab's A (B_NOTES): no shared (pitch, onset) pair; and back
    assert chance_fidelities([aba, bab]) == [0.0, 0.0]
    metrics = copy_fidelity_metrics([aba], [aba, bab])
    assert metrics["samples"]["mean"] == 1.0 and metrics["samples"]["returns"] == 1
    assert metrics["ceiling"]["mean"] == 1.0 and metrics["chance"]["mean"] == 0.0
