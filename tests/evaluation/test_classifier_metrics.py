"""Classifier metrics through real torchmetrics, against counts worked out by hand."""

import io
import json
from pathlib import Path

import matplotlib.image
import pytest
import torch

from staria.data.datasets import IGNORE_INDEX
from staria.evaluation.classifier_metrics import (
    classify_samples,
    predict_classes,
    save_scores,
    score_classes,
)
from staria.evaluation.samples import GeneratedSample
from staria.tokenizer import MusicTokenizerWithStyle, TokenKind, TokenTable

FORMS = ("AB", "ABA", "ABC")
# requested 0 0 1 1 1 2, predicted 0 1 1 1 0 2: one AB heard as ABA, one ABA heard as AB.
REQUESTED = [0, 0, 1, 1, 1, 2]
PREDICTED = [0, 1, 1, 1, 0, 2]


def test_scores_match_hand_counts():
    scores = score_classes("form", torch.tensor(PREDICTED), torch.tensor(REQUESTED), FORMS)
    assert scores.confusion == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert scores.accuracy == pytest.approx(4 / 6)
    assert scores.precision == pytest.approx({"AB": 1 / 2, "ABA": 2 / 3, "ABC": 1.0})
    assert scores.recall == pytest.approx({"AB": 1 / 2, "ABA": 2 / 3, "ABC": 1.0})
    assert scores.f1 == pytest.approx({"AB": 1 / 2, "ABA": 2 / 3, "ABC": 1.0})
    assert scores.macro_f1 == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert scores.support == {"AB": 2, "ABA": 3, "ABC": 1}
    assert scores.num_scored == 6


def test_unknown_requests_are_left_out():
    scores = score_classes(
        "style",
        torch.tensor([*PREDICTED, 2, 0]),
        torch.tensor([*REQUESTED, IGNORE_INDEX, IGNORE_INDEX]),
        FORMS,
    )
    assert scores.num_scored == 6
    assert scores.accuracy == pytest.approx(4 / 6)
    assert scores.confusion == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]


def test_precision_differs_from_recall_when_errors_are_one_sided():
    # requested 0 0 1 1, predicted 0 0 0 1: class 0 precision 2/3, recall 1; class 1 the reverse.
    scores = score_classes(
        "form", torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]), FORMS[:2]
    )
    assert scores.precision == pytest.approx({"AB": 2 / 3, "ABA": 1.0})
    assert scores.recall == pytest.approx({"AB": 1.0, "ABA": 1 / 2})
    assert scores.f1["AB"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))


class PitchVoter(torch.nn.Module):
    """A tiny bag-of-tokens classifier: a middle-C note votes class 0, a D class 1, an E class 2.

    It also checks what it is given: padding only where the mask is False and no token that
    names the form or a section."""

    def __init__(self, tokenizer: MusicTokenizerWithStyle, hidden_ids: set[int]):
        super().__init__()
        self.votes = torch.nn.EmbeddingBag(tokenizer.vocab_size(), len(FORMS), mode="sum")
        torch.nn.init.zeros_(self.votes.weight)
        for form_index, pitch in enumerate((60, 62, 64)):
            self.votes.weight.data[tokenizer.encode([("piano", pitch, 80)])[0], form_index] = 1.0
        self.pad_id, self.hidden_ids = tokenizer.pad_id, hidden_ids

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        assert (tokens[~token_mask] == self.pad_id).all()
        assert not set(tokens[token_mask].tolist()) & self.hidden_ids
        return self.votes(tokens, per_sample_weights=token_mask.float())


def generated(tokenizer, form: str, pitches: list[int]) -> GeneratedSample:
    tokens = [("prefix", "instrument", "piano"), tokenizer.form_token(form), "<S>", "<A_SECTION>"]
    for index, pitch in enumerate(pitches):
        tokens += [("piano", pitch, 80), ("onset", 100 * index), ("dur", 100)]
    return GeneratedSample(
        name=f"{form}-{pitches}",
        midi_path=Path("unused.mid"),
        form=form,
        style=None,
        token_ids=tuple(tokenizer.encode([*tokens, "<E>"])),
        prompt_ids=(),
        ended_with_eos=True,
    )


def test_classify_samples_runs_a_model_over_padded_batches(tokenizer):
    hidden = set(TokenTable.from_tokenizer(tokenizer).ids_of(TokenKind.FORM, TokenKind.SECTION))
    model = PitchVoter(tokenizer, {int(i) for i in hidden})
    # Same requests/predictions as REQUESTED/PREDICTED, with sequences of different lengths.
    samples = [
        generated(tokenizer, "AB", [60]),
        generated(tokenizer, "AB", [62, 62, 60]),
        generated(tokenizer, "ABA", [62, 67]),
        generated(tokenizer, "ABA", [62, 62, 62, 62]),
        generated(tokenizer, "ABA", [60, 60]),
        generated(tokenizer, "ABC", [64]),
    ]
    scores = classify_samples(
        model, samples, "form", FORMS, tokenizer.pad_id, hidden_ids=hidden, batch_size=4
    )
    assert scores.confusion == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert scores.accuracy == pytest.approx(4 / 6)


def test_class_indices_pass_through_and_max_len_cuts(tokenizer):
    seen_lengths = []

    def predict(tokens, token_mask):
        seen_lengths.extend(token_mask.sum(dim=1).tolist())
        return token_mask.sum(dim=1) % 2

    predicted = predict_classes(predict, [[5, 6, 7], [5], [5, 6, 7, 8, 9]], pad_id=2, max_len=4)
    assert seen_lengths == [3, 1, 4]
    assert predicted.tolist() == [1, 1, 0]


def test_save_scores_writes_json_and_a_readable_png(tmp_path):
    scores = score_classes("form", torch.tensor(PREDICTED), torch.tensor(REQUESTED), FORMS)
    json_path, png_path = save_scores(scores, tmp_path / "eval")
    saved = json.loads(json_path.read_text())
    assert saved["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert saved["f1"]["ABA"] == pytest.approx(2 / 3)
    image = matplotlib.image.imread(io.BytesIO(png_path.read_bytes()), format="png")
    assert image.shape[0] > 100 and image.shape[1] > 100
