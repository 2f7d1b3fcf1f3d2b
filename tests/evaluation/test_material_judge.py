"""The material judge: by hand on two known materials, and on held-out synthetic pieces, where
it must recover the forms (the instrument's ceiling) far above shuffled forms (its chance)."""

from __future__ import annotations

import numpy as np
import pytest

from staria.evaluation.material_judge import (
    fit_threshold,
    form_accuracy,
    judge_form,
    letter_accuracy,
    shuffled_forms,
)
from staria.evaluation.notes import sectioned_notes
from staria.tokenizer import TokenTable
from tests.evaluation.test_structure_metrics import A_NOTES, B_NOTES, sequence_ids
from tests.training.runs import first_train_batch, synthetic_datamodule

# section_similarities' hand computation: A and B share only their rhythm, cosine 0.594
COSINE_AB = 2 / np.sqrt((3 / 9 + 2 / 4 + 2) * 4)


@pytest.fixture(scope="module")
def table(tokenizer) -> TokenTable:
    return TokenTable.from_tokenizer(tokenizer)


@pytest.mark.parametrize(
    ("threshold", "form", "letters", "letters_right"),
    [
        (COSINE_AB - 0.01, "AAA", ("A", "A", "A"), 2 / 3),
        (COSINE_AB + 0.01, "ABA", ("A", "B", "A"), 1.0),
    ],
)
def test_sections_merge_exactly_when_their_material_reaches_the_threshold(
    tokenizer, table, threshold, form, letters, letters_right
):
    ids = sequence_ids(tokenizer, [("A", A_NOTES), ("B", B_NOTES), ("A", A_NOTES)], form="ABA")
    piece = sectioned_notes(ids, table)
    judged = judge_form(piece, threshold)
    assert (judged.form, judged.letters) == (form, letters)
    assert letter_accuracy(piece, threshold) == pytest.approx(letters_right)


def test_the_judge_recovers_held_out_forms_far_above_shuffled_ones(tmp_path, table):
    datamodule = synthetic_datamodule(tmp_path, synthesis={"pieces_per_form": 12})
    first_train_batch(datamodule)
    pieces = {
        split: [sectioned_notes(dataset.source.split.tokens(i), table) for i in range(len(dataset))]
        for split, dataset in datamodule.datasets.items()
    }
    threshold = fit_threshold(pieces["train"])
    held_out = pieces["val"]
    forms = [piece.form for piece in held_out]
    ceiling = form_accuracy(held_out, forms, threshold)
    chance = form_accuracy(held_out, shuffled_forms(forms), threshold)
    assert len(held_out) >= 16 and ceiling >= 0.95
    assert chance < 0.5
