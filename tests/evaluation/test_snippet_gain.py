"""The snippet information gain: regions by hand, exactly zero for a model that cannot read its
snippets, the task's own loss on the true snippets, and the baseline's prompt aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from staria.data.collate import Collator
from staria.evaluation.snippet_gain import (
    REGIONS,
    same_form_donors,
    sequence_losses,
    snippet_information_gain,
    token_regions,
)
from staria.models import CrossAttendingDecoder, DecoderOnlyBaseline, SnippetEncoder, StariaModel
from tests.training.runs import first_train_batch, synthetic_datamodule

SHAPE = {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16}
SYNTHESIS = {"pieces_per_form": 4, "forms": ["AB", "ABA"], "min_tokens": 120, "max_tokens": 200}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    cache = tmp_path_factory.mktemp("gain_cache")
    found = {}
    for kind in ("staria", "baseline", "unconditional"):
        module = synthetic_datamodule(
            cache, model_kind=kind, synthesis=SYNTHESIS, snippet_len=16, max_seq_len=512
        )
        first_train_batch(module)
        found[kind] = module.datasets["train"]
    return found


def staria_net(gate_init: float) -> StariaModel:
    torch.manual_seed(0)
    return StariaModel(
        SnippetEncoder(max_seq_len=32, **SHAPE),
        CrossAttendingDecoder(max_seq_len=512, adapter_dim=4, gate_init=gate_init, **SHAPE),
    ).eval()


def test_regions_follow_the_sections_by_hand(datasets):
    dataset = datasets["staria"]
    index = next(i for i in range(len(dataset)) if dataset.source.record(i).form == "ABA")
    ids = dataset.source.split.tokens(index)
    (a, a_start, a_end), (b, b_start, b_end), (a2, r_start, r_end) = dataset.source.sections(
        index, ids
    )
    assert (a, b, a2) == ("A", "B", "A")
    region = token_regions(dataset, index)  # the whole piece fits: positions are ids' own
    assert len(region) == len(ids)
    counts = {name: int((region == i).sum()) for i, name in enumerate(REGIONS)}
    assert counts["in_snippet"] == min(16, a_end - a_start) + min(16, b_end - b_start)
    assert counts["past_snippet"] == (a_end - a_start) + (b_end - b_start) - counts["in_snippet"]
    assert counts["returning"] == r_end - r_start
    assert counts["section_token"] == 3 and counts["end"] == 1


def test_donors_share_the_form_and_are_never_the_piece_itself(datasets):
    dataset = datasets["staria"]
    donors = same_form_donors(dataset)
    assert len(donors) == len(dataset)
    for piece, donor in donors.items():
        assert donor != piece
        assert dataset.source.record(donor).form == dataset.source.record(piece).form


def test_closed_gates_gain_exactly_nothing_and_open_gates_gain_something(datasets):
    closed = snippet_information_gain(staria_net(0.0), datasets["staria"], resamples=50)
    for name in REGIONS:
        assert closed[name].gain == 0 and closed[name].interval == (0, 0), name
    opened = snippet_information_gain(staria_net(1.0), datasets["staria"], resamples=50)
    assert opened["all"].gain != 0


def test_the_unconditional_control_reads_staria_s_sequences_and_gains_nothing(datasets):
    staria, unconditional = datasets["staria"], datasets["unconditional"]
    for index in range(len(staria)):
        theirs, ours = staria.item(index), unconditional.item(index)
        assert set(ours) == {"tokens", "loss_mask"}
        np.testing.assert_array_equal(ours["tokens"], theirs["tokens"])
        np.testing.assert_array_equal(ours["loss_mask"], theirs["loss_mask"])
    torch.manual_seed(0)
    net = DecoderOnlyBaseline(max_seq_len=512, **SHAPE).eval()
    gains = snippet_information_gain(net, unconditional, resamples=50)
    assert all(gains[name].gain == 0 for name in REGIONS)


def test_per_token_losses_are_the_training_loss_on_the_true_snippets(datasets):
    dataset = datasets["staria"]
    net = staria_net(1.0)
    batch = Collator(dataset.source.pad_id)([dataset.item(0)])
    losses = sequence_losses(net, batch, "staria")
    logits = net(batch["snippets"], batch["snippet_mask"], batch["tokens"], batch["token_mask"])
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], batch["tokens"][0, 1:])
    assert losses[0, 1:].mean().item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_baseline_scores_its_sequence_after_each_prompt(datasets):
    dataset = datasets["baseline"]
    torch.manual_seed(0)
    net = DecoderOnlyBaseline(max_seq_len=1024, **SHAPE).eval()
    gains = snippet_information_gain(net, dataset, resamples=50)
    staria_tokens = snippet_information_gain(staria_net(0.0), datasets["staria"], resamples=50)
    for name in REGIONS:  # the same sequences and regions, whatever the prompt's length
        assert gains[name].tokens == staria_tokens[name].tokens, name
    own = dataset.item(0)
    sequence = own["tokens"][own["loss_mask"]]
    np.testing.assert_array_equal(sequence, dataset.source.split.tokens(0)[dataset.positions(0)])
