"""The filters generation samples through, on known distributions, and batched sampling on a tiny
model: determinism under a seed, each sample stopping at its own <E> or at max_length."""

import numpy as np
import pytest
import torch

from staria.generation.generate import generate
from staria.generation.prompts import scratch_prompt
from staria.generation.sampling import SamplingConfigError, SamplingSettings, sample_pieces
from staria.models import DecoderOnlyBaseline, StariaModel
from staria.models.autoregressive import LogitsFilter, LogitsFilterError
from staria.tokenizer import MusicTokenizerWithStyle
from tests.harness import compose_config, tiny_net

PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
LOGITS = PROBS.log()
DRAWS = 20_000


def draw(filtered: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Empirical frequencies of `DRAWS` samples from softmax(filtered), as sampling does."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(filtered.softmax(-1)[0], DRAWS, replacement=True, generator=generator)
    return np.bincount(picks.numpy(), minlength=filtered.shape[-1]) / DRAWS


def test_top_k_never_samples_outside_the_k_largest():
    frequencies = draw(LogitsFilter(top_k=2)(LOGITS))
    assert set(np.flatnonzero(frequencies)) == {1, 3}
    # Renormalised over the two kept tokens: 0.5 / 0.8 and 0.3 / 0.8.
    np.testing.assert_allclose(frequencies[[1, 3]], [0.625, 0.375], atol=0.015)


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.4, {1}), (0.7, {1, 3}), (0.85, {1, 2, 3}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p, kept):
    filtered = LogitsFilter(top_p=top_p)(LOGITS)
    assert set(torch.isfinite(filtered[0]).nonzero().flatten().tolist()) == kept
    assert set(np.flatnonzero(draw(filtered))) == kept


def test_min_p_drops_tokens_below_a_fraction_of_the_most_likely():
    # Threshold 0.5 * 0.5 = 0.25: only 0.5 and 0.3 survive.
    filtered = LogitsFilter(min_p=0.5)(LOGITS)
    assert set(torch.isfinite(filtered[0]).nonzero().flatten().tolist()) == {1, 3}


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_matches_the_tempered_distribution(temperature):
    frequencies = draw(LogitsFilter(temperature=temperature)(LOGITS))
    expected = (PROBS ** (1 / temperature)) / (PROBS ** (1 / temperature)).sum()
    np.testing.assert_allclose(frequencies, expected[0].numpy(), atol=0.015)


def test_lower_temperature_sharpens_toward_the_mode():
    top = [draw(LogitsFilter(temperature=t)(LOGITS))[1] for t in (2.0, 1.0, 0.5, 0.1)]
    assert top == sorted(top) and top[-1] > 0.99


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ({"temperature": 0.05}, "sampling.temperature"),
        ({"temperature": 2.5}, "sampling.temperature"),
        ({"top_k": -1}, "sampling.top_k"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"min_p": 1.0}, "sampling.min_p"),
        ({"max_length": 0}, "sampling.max_length"),
    ],
)
def test_settings_out_of_range_name_the_key(setting, key):
    with pytest.raises(SamplingConfigError, match=key.replace(".", r"\.")) as error:
        SamplingSettings(**setting)
    assert error.value.key == key


@pytest.mark.parametrize(
    "setting",
    [{"temperature": 0.05}, {"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"min_p": 1.0}],
)
def test_the_model_filter_and_the_cli_accept_the_same_settings(setting):
    """One declaration of the ranges: what the CLI refuses, the model's filter refuses too."""
    with pytest.raises(LogitsFilterError):
        LogitsFilter(**setting)
    with pytest.raises(SamplingConfigError):
        SamplingSettings(**setting)


def test_temperature_zero_is_greedy_from_the_command_line_too():
    assert SamplingSettings(temperature=0).logits_filter.greedy


def test_generate_rejects_temperature_from_the_command_line_before_loading_anything():
    cfg = compose_config("generate", "checkpoint=/nonexistent.ckpt", "sampling.temperature=3.0")
    with pytest.raises(SamplingConfigError, match=r"sampling\.temperature=3\.0.*\[0\.1, 2\.0\]"):
        generate(cfg)


TOKENIZER = MusicTokenizerWithStyle()


def tiny_staria() -> StariaModel:
    vocab, decoder = TOKENIZER.vocab_size(), {"max_seq_len": 256, "adapter_dim": 8}
    return tiny_net(
        vocab=vocab, trunk={"depth": 1}, encoder={"max_seq_len": 64}, decoder=decoder
    ).eval()


def forbid_eos(model: StariaModel | DecoderOnlyBaseline, rows: slice = slice(None)) -> None:
    """Make `<E>` impossible in `rows` of every batch: its logit becomes -inf."""
    net = model.decoder.net if isinstance(model, StariaModel) else model.net

    def hook(module, inputs, logits):
        logits = logits.clone()
        logits[rows, ..., TOKENIZER.eos_id] = float("-inf")
        return logits

    net.to_logits.register_forward_hook(hook)


def force_eos(model: StariaModel, row: int) -> None:
    """Row `row` of every batch emits `<E>` at once."""

    def hook(module, inputs, logits):
        logits = logits.clone()
        logits[row, ..., TOKENIZER.eos_id] = 1e4
        return logits

    model.decoder.net.to_logits.register_forward_hook(hook)


def sample(model, prompts, seed=0, **settings):
    torch.manual_seed(seed)
    return sample_pieces(
        model,
        prompts,
        SamplingSettings(**settings),
        batch_size=len(prompts),
        eos_id=TOKENIZER.eos_id,
        pad_id=TOKENIZER.pad_id,
    )[0]


def test_sampling_is_deterministic_under_a_seed():
    model = tiny_staria()
    prompts = [scratch_prompt(TOKENIZER)] * 3
    first = sample(model, prompts, seed=7, max_length=40, top_p=0.95)
    again = sample(model, prompts, seed=7, max_length=40, top_p=0.95)
    other = sample(model, prompts, seed=8, max_length=40, top_p=0.95)
    assert [p.token_ids.tolist() for p in first] == [p.token_ids.tolist() for p in again]
    assert [p.token_ids.tolist() for p in first] != [p.token_ids.tolist() for p in other]


def test_a_sample_that_never_emits_eos_stops_at_max_length():
    model = tiny_staria()
    forbid_eos(model)
    pieces = sample(model, [scratch_prompt(TOKENIZER)] * 2, max_length=50)
    for piece in pieces:
        assert len(piece.token_ids) == 50
        assert not piece.ended_with_eos
        assert TOKENIZER.eos_id not in piece.token_ids


def test_each_sample_stops_at_its_own_eos():
    model = tiny_staria()
    force_eos(model, row=0)
    forbid_eos(model, rows=slice(1, None))
    start = scratch_prompt(TOKENIZER)
    ended, running = sample(model, [start, start], max_length=30)
    assert ended.ended_with_eos and ended.token_ids.tolist() == [*start.decoder_start, 1]
    assert not running.ended_with_eos and len(running.token_ids) == 30
