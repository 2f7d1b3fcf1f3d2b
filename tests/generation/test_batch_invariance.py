"""Greedy samples do not depend on the batch: the same prompt gives the same tokens whatever
the batch size, the other prompts in its batch (their lengths, their snippets) and how far
decoding runs past `max_seq_len`; and filters at their neutral values change nothing.

Models are small and random (rotary layouts, so the KV cache slides past `max_seq_len`); a
random model's near-uniform logits make a greedy choice sensitive to any change of a row's
inputs, which is what these tests look for.
"""

import random

import pytest
import torch

from staria.models import DecoderOnlyBaseline, StariaModel
from staria.models.autoregressive import DecodingSpec, LogitsFilter
from tests.harness import tiny_net

VOCAB, EOS, PAD = 300, 1, 2
MAX_SEQ_LEN = 24
GREEDY = DecodingSpec(LogitsFilter(temperature=0.0), eos_id=EOS, pad_id=PAD)


def baseline() -> DecoderOnlyBaseline:
    net = tiny_net("baseline_tiny", VOCAB, max_seq_len=MAX_SEQ_LEN, aria_layout=True)
    return net.eval()


def staria() -> StariaModel:
    encoder = {"depth": 1, "max_seq_len": 16}
    decoder = {"max_seq_len": MAX_SEQ_LEN, "adapter_dim": 8, "aria_layout": True}
    model = tiny_net("staria_tiny", VOCAB, encoder=encoder, decoder=decoder).eval()
    for gate in model.decoder.cross_attention_gates():
        torch.nn.init.constant_(gate, 1.0)  # open: the snippets change the samples
    return model


def random_prompts(seed: int, count: int) -> list[dict]:
    """Prompts of 1 to 30 tokens (some past max_seq_len), each with 1 to 3 snippets."""
    rng = random.Random(seed)

    def tokens(n):
        return torch.tensor([rng.randrange(3, VOCAB) for _ in range(n)])

    return [
        {
            "prompt": tokens(rng.randint(1, 30)),
            "snippets": [tokens(rng.randint(2, 12)) for _ in range(rng.randint(1, 3))],
        }
        for _ in range(count)
    ]


def snippet_batch(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Snippets [B, S, L] right-padded with PAD, and their mask, as the collator builds them."""
    most = max(len(item["snippets"]) for item in items)
    longest = max(len(s) for item in items for s in item["snippets"])
    snippets = torch.full((len(items), most, longest), PAD)
    for b, item in enumerate(items):
        for s, snippet in enumerate(item["snippets"]):
            snippets[b, s, : len(snippet)] = snippet
    return snippets, snippets != PAD


def sample(model, items: list[dict], new_tokens: int, decoding=GREEDY) -> list[list[int]]:
    prompts = [item["prompt"] for item in items]
    with torch.no_grad():
        if isinstance(model, StariaModel):
            out = model.generate(*snippet_batch(items), prompts, new_tokens, decoding)
        else:
            out = model.generate(prompts, new_tokens, decoding)
    rows = []
    for row in out.tolist():  # up to and with the first eos; pads after it are not the sample
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


@pytest.mark.parametrize("make_model", [baseline, staria], ids=["baseline", "staria"])
@pytest.mark.parametrize("seed", range(3))
def test_a_prompts_greedy_sample_is_the_same_in_any_batch(make_model, seed):
    model = make_model()
    items = random_prompts(seed, 6)
    new_tokens = 40  # every sample decodes past max_seq_len=24: the cache slides
    alone = [sample(model, [item], new_tokens)[0] for item in items]
    rng = random.Random(seed)
    for batch_size in (2, 3, 6):
        order = list(range(len(items)))
        rng.shuffle(order)
        for first in range(0, len(order), batch_size):
            chosen = order[first : first + batch_size]
            together = sample(model, [items[i] for i in chosen], new_tokens)
            for i, tokens in zip(chosen, together, strict=True):
                assert tokens == alone[i], f"prompt {i} in batch {chosen} (size {batch_size})"


@pytest.mark.parametrize("make_model", [baseline, staria], ids=["baseline", "staria"])
def test_within_max_seq_len_the_cache_changes_no_sample(make_model):
    model = make_model()
    items = [item for item in random_prompts(7, 8) if len(item["prompt"]) <= 12]
    no_cache = DecodingSpec(GREEDY.logits_filter, EOS, PAD, cache_kv=False)
    new_tokens = MAX_SEQ_LEN - 12
    assert sample(model, items, new_tokens) == sample(model, items, new_tokens, no_cache)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_filters_at_their_neutral_values_leave_the_logits_unchanged(temperature):
    generator = torch.Generator().manual_seed(0)
    # from flat to very peaked rows: float cumulative sums reach past 1 on some of them
    logits = torch.randn(64, 17742, generator=generator) * torch.logspace(-2, 2, 64)[:, None]
    plain = LogitsFilter(temperature=temperature)(logits)
    for neutral in (
        {"top_k": 0},
        {"top_p": 1.0},
        {"min_p": 0.0},
        {"top_k": 0, "top_p": 1.0, "min_p": 0.0},
    ):
        filtered = LogitsFilter(temperature=temperature, **neutral)(logits)
        assert torch.equal(filtered, plain), neutral
    assert torch.equal(plain, logits / temperature)
