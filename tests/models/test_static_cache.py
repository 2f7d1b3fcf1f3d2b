"""Static-cache decoding against x-transformers' own cached forward, logits and greedy samples.

The reference is x-transformers' `return_intermediates` / `cache=` loop, which is what
`generate_with_cache` ran before the static cache: a window of the last `max_seq_len` tokens,
the self-attention cache trimmed to `max_seq_len - 1` keys as it slides, and the left-pad mask
following the window. Nets are drawn at random: layout (default or Aria), cross-attention with
adapters or not, activation checkpointing or not, depth, heads, batch, left pads, context
padding (including a row with none), prompt length and decode length (past `max_seq_len` for
rotary nets). Gates and adapters get non-zero values so the branches they open are checked too.
"""

import random

import pytest
import torch
from x_transformers.x_transformers import Attention

from staria.models.autoregressive import (
    DecodingSpec,
    LogitsFilter,
    generate_with_cache,
    window_pad_counts,
)
from staria.models.static_cache import StaticCacheDecoder, UnsupportedNetError
from staria.models.xtransformers import Bridge, TrunkShape, build_decoder_net

VOCAB = 97
PAD = 2
SMALL = TrunkShape(VOCAB, dim=32, depth=1, heads=2, dim_head=16, max_seq_len=16)


def random_case(seed: int) -> dict:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    aria, cross = rng.random() < 0.5, rng.random() < 0.5
    heads, dim_head = rng.choice([1, 2, 3]), rng.choice([8, 16])
    dim = heads * dim_head
    max_seq_len = rng.choice([12, 20, 32])
    shape = TrunkShape(
        VOCAB,
        dim,
        rng.choice([1, 2, 3]),
        heads,
        dim_head,
        max_seq_len,
        activation_checkpointing=rng.random() < 0.3,
    )
    bridge = Bridge(dim, adapter_dim=rng.choice([0, 4])) if cross else None
    net = build_decoder_net(shape, aria_layout=aria, bridge=bridge).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "gate" in name or "adapter.up" in name:
                parameter.normal_(std=0.5)
    batch = rng.choice([1, 2, 4])
    prompt_len = rng.randint(1, max_seq_len - 1)
    pad_counts = torch.tensor([rng.randint(0, prompt_len - 1) for _ in range(batch)])
    pad_counts[rng.randrange(batch)] = 0  # the longest prompt has no pad
    prompts = torch.randint(5, VOCAB, (batch, prompt_len))
    prompts[torch.arange(prompt_len)[None, :] < pad_counts[:, None]] = PAD
    room = 2 * max_seq_len if aria else max_seq_len - prompt_len
    kwargs = {}
    if cross:
        context_len = rng.randint(1, 9)
        context_mask = torch.rand(batch, context_len) < 0.7
        context_mask[0, 0] = True
        if batch > 1 and rng.random() < 0.5:
            context_mask[-1] = False  # a prompt without snippets
        kwargs = {"context": torch.randn(batch, context_len, dim), "context_mask": context_mask}
    new_tokens = torch.randint(5, VOCAB, (batch, rng.randint(1, room)))
    return {"net": net, "prompts": prompts, "pads": pad_counts, "new": new_tokens, "kw": kwargs}


def x_transformers_decoding(net, prompts, pad_counts, kwargs):
    """x-transformers' cached loop as a generator: yields next-token logits [B, V], first for
    the prompts, then after each token [B, 1] sent in."""
    max_seq_len, cache, out = net.max_seq_len, None, prompts
    while True:
        if cache is not None and out.shape[1] > max_seq_len:
            for layer in cache.attn_intermediates:
                if layer.layer_type == "a":
                    layer.cached_kv = [t[..., -(max_seq_len - 1) :, :] for t in layer.cached_kv]
        pads = window_pad_counts(pad_counts, out.shape[1], max_seq_len)
        with torch.no_grad():
            logits, cache = net(
                out[:, -max_seq_len:],
                return_intermediates=True,
                cache=cache,
                seq_start_pos=pads if pads.any() else None,
                **kwargs,
            )
        token = yield logits[:, -1]
        out = torch.cat((out, token), dim=-1)


@pytest.mark.parametrize("seed", range(40))
def test_static_cache_logits_equal_x_transformers_cached_forward(seed):
    case = random_case(seed)
    net, prompts, pads, new, kw = (
        case["net"],
        case["prompts"],
        case["pads"],
        case["new"],
        case["kw"],
    )
    reference = x_transformers_decoding(net, prompts, pads, kw)
    decoder = StaticCacheDecoder(net, prompts.shape[0], prompts.shape[1] + new.shape[1], **kw)
    torch.testing.assert_close(
        decoder.prefill(prompts, pads), next(reference), atol=2e-5, rtol=1e-4
    )
    for step in range(new.shape[1] - 1):
        token = new[:, step : step + 1]
        torch.testing.assert_close(
            decoder.step(token), reference.send(token), atol=2e-5, rtol=1e-4, msg=f"step {step}"
        )


@pytest.mark.parametrize("seed", range(12))
def test_greedy_samples_equal_x_transformers_cached_loop(seed):
    case = random_case(100 + seed)
    net, prompts, pads, kw = case["net"], case["prompts"], case["pads"], case["kw"]
    steps = case["new"].shape[1]
    greedy = DecodingSpec(LogitsFilter(temperature=0), eos_id=1, pad_id=PAD)
    rows = [row[pad:] for row, pad in zip(prompts, pads.tolist(), strict=True)]
    ours = generate_with_cache(net, rows, steps, greedy, **kw)
    reference = x_transformers_decoding(net, prompts, pads, kw)
    logits, theirs = next(reference), []
    for _ in range(steps):
        theirs.append(logits.argmax(dim=-1, keepdim=True))
        logits = reference.send(theirs[-1])
    theirs = torch.cat(theirs, dim=-1)
    eos = (theirs == 1).long()
    theirs = theirs.masked_fill(eos.cumsum(-1) - eos > 0, PAD)  # pad after each row's eos
    assert torch.equal(ours, theirs[:, : ours.shape[1]])


def test_unsupported_attention_feature_is_refused_by_name():
    net = build_decoder_net(SMALL)
    attention = next(m for m in net.modules() if isinstance(m, Attention))
    attention.qk_norm = True
    with pytest.raises(UnsupportedNetError, match=r"layer 0 .*qk_norm"):
        StaticCacheDecoder(net, 1, 8)


def test_absolute_positions_cannot_decode_past_max_seq_len():
    net = build_decoder_net(SMALL).eval()
    with pytest.raises(ValueError, match="max_seq_len=16"):
        StaticCacheDecoder(net, 1, 17)


def test_cross_attending_net_needs_context():
    net = build_decoder_net(SMALL, bridge=Bridge(32)).eval()
    with pytest.raises(ValueError, match="context"):
        StaticCacheDecoder(net, 1, 8)
