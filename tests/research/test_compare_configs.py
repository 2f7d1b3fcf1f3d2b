"""The comparison is fair by construction: matched parameters, identical data and step budget."""

from pathlib import Path

import hydra
import pytest
import torch

from staria.research.compare import CLASSIFIER_PRESET, GENERATORS, generator_presets
from staria.research.phases import train_config
from staria.training.tasks.base import parameter_counts


@pytest.fixture(scope="module")
def configs():
    return {model: train_config(preset, Path("unused")) for model, preset in GENERATORS.items()}


def test_staria_and_the_baseline_match_in_parameters_within_two_percent(configs):
    counts = {
        model: parameter_counts(hydra.utils.instantiate(cfg.model.net))["params/all/total"]
        for model, cfg in configs.items()
    }
    assert counts == {"staria": 3_679_010, "baseline": 3_702_816}
    assert abs(counts["baseline"] / counts["staria"] - 1) < 0.02


def test_both_generators_see_the_same_pieces_crops_batches_and_steps(configs):
    staria, baseline = configs["staria"], configs["baseline"]
    shared = ("synthesis", "snippet_len", "max_snippets", "max_seq_len", "batch_size", "seed")
    for key in shared:
        assert staria.data[key] == baseline.data[key], key
    assert staria.trainer.max_steps == baseline.trainer.max_steps
    assert staria.model.optimizer == baseline.model.optimizer
    assert staria.model.scheduler == baseline.model.scheduler
    assert (staria.data.model_kind, baseline.data.model_kind) == ("staria", "baseline")


def test_the_positions_hold_the_longest_inputs(configs):
    staria, baseline = configs["staria"], configs["baseline"]
    data = staria.data
    longest_prompt = 2 + data.max_snippets * (data.snippet_len + 1)
    assert staria.model.net.encoder.max_seq_len >= data.snippet_len + 1
    assert staria.model.net.decoder.max_seq_len >= data.max_seq_len
    assert baseline.model.net.max_seq_len >= data.max_seq_len + longest_prompt


def test_the_judge_learns_from_pieces_the_generators_never_test_on():
    judge = train_config(CLASSIFIER_PRESET, Path("unused"))
    generator = train_config(GENERATORS["staria"], Path("unused"))
    assert judge.data.task == "classification"
    assert judge.data.synthesis.seed != generator.data.synthesis.seed


def test_the_full_size_presets_match_within_two_percent_too():
    counts = {}
    for model, preset in generator_presets("full").items():
        cfg = train_config(preset, Path("unused"))
        with torch.device("meta"):
            counts[model] = parameter_counts(hydra.utils.instantiate(cfg.model.net))
    totals = {model: c["params/all/total"] for model, c in counts.items()}
    assert totals == {"staria": 861_497_872, "baseline": 848_709_120}
    assert abs(totals["baseline"] / totals["staria"] - 1) < 0.02
