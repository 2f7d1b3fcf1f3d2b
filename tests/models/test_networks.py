"""Shapes, sizes, gating, masking and KV-cached generation of the Staria networks (tiny sizes)."""

from dataclasses import replace

import pytest
import torch

from staria.models import DecoderOnlyBaseline, SnippetEncoder, StariaModel
from staria.models.autoregressive import ContextTooLongError, DecodingSpec, LogitsFilter
from tests.harness import TINY_TRUNK, tiny_net

VOCAB = 97
NO_EOS = DecodingSpec(eos_id=-1)
GREEDY = replace(NO_EOS, logits_filter=LogitsFilter(temperature=0.0))


def tiny_staria(seed: int = 0, **decoder_options) -> StariaModel:
    decoder = {"max_seq_len": 64, "adapter_dim": 8, **decoder_options}
    return tiny_net(vocab=VOCAB, seed=seed, encoder={"max_seq_len": 16}, decoder=decoder).eval()


def snippet_batch(batch: int = 2, num_snippets: int = 3, snippet_len: int = 16):
    snippets = torch.randint(3, VOCAB, (batch, num_snippets, snippet_len))
    mask = torch.ones_like(snippets, dtype=torch.bool)
    mask[0, -1] = False  # piece 0 has one snippet fewer
    mask[1, 0, 10:] = False  # a short snippet
    return snippets, mask


def test_full_size_baseline_counts_513m_parameters():
    with torch.device("meta"):
        baseline = DecoderOnlyBaseline(17742)
    assert sum(p.numel() for p in baseline.parameters()) == 513_953_280


def test_full_size_aria_layout_is_aria_medium_size():
    with torch.device("meta"):
        aria = DecoderOnlyBaseline(17742, aria_layout=True)
    count = sum(p.numel() for p in aria.parameters())
    assert count == pytest.approx(659e6, rel=0.01)
    assert not any(name.endswith("proj.bias") for name, _ in aria.named_parameters())


def test_full_size_encoder_attention_is_1536_wide():
    with torch.device("meta"):
        encoder = SnippetEncoder(17742)
    to_q = encoder.net.attn_layers.layers[0][1].to_q
    assert tuple(to_q.weight.shape) == (8 * 192, 1536)
    assert len(encoder.net.attn_layers.layers) == 2 * 6


def test_encoder_pools_real_tokens_only():
    encoder = tiny_net("encoder_tiny", vocab=VOCAB, max_seq_len=16).eval()
    snippets = torch.randint(3, VOCAB, (2, 16))
    mask = torch.ones_like(snippets, dtype=torch.bool)
    mask[1, 9:] = False
    states, pooled = encoder(snippets, mask)
    assert states.shape == (2, 16, 32) and pooled.shape == (2, 32)
    torch.testing.assert_close(pooled[1], states[1, :9].mean(dim=0))
    other_padding = snippets.clone()
    other_padding[1, 9:] = 2
    _, pooled_again = encoder(other_padding, mask)
    torch.testing.assert_close(pooled_again, pooled)


def test_staria_logits_ignore_snippets_while_gates_are_zero():
    model = tiny_staria()
    snippets, snippet_mask = snippet_batch()
    tokens = torch.randint(3, VOCAB, (2, 20))
    token_mask = torch.ones_like(tokens, dtype=torch.bool)
    logits = model(snippets, snippet_mask, tokens, token_mask)
    assert logits.shape == (2, 20, VOCAB)
    other_snippets = torch.randint(3, VOCAB, snippets.shape)
    assert torch.equal(model(other_snippets, snippet_mask, tokens, token_mask), logits)

    with torch.no_grad():
        for gate in model.decoder.cross_attention_gates():
            gate.fill_(1.0)
    gated = model(snippets, snippet_mask, tokens, token_mask)
    assert not torch.allclose(model(other_snippets, snippet_mask, tokens, token_mask), gated)


@pytest.mark.parametrize("gate_init", [0.5, 1.0, -2.0])
def test_gate_init_opens_every_gate_and_the_snippets_count_from_the_start(gate_init):
    model = tiny_staria(gate_init=gate_init)
    gates = model.decoder.cross_attention_gates()
    assert len(gates) == TINY_TRUNK["depth"]
    assert all(gate.item() == gate_init for gate in gates)
    snippets, snippet_mask = snippet_batch()
    tokens = torch.randint(3, VOCAB, (2, 20))
    token_mask = torch.ones_like(tokens, dtype=torch.bool)
    other_snippets = torch.randint(3, VOCAB, snippets.shape)
    logits = model(snippets, snippet_mask, tokens, token_mask)
    assert not torch.allclose(model(other_snippets, snippet_mask, tokens, token_mask), logits)


def test_staria_masked_snippet_tokens_do_not_matter():
    model = tiny_staria(gate_init=1.0)
    snippets, snippet_mask = snippet_batch()
    tokens = torch.randint(3, VOCAB, (2, 12))
    token_mask = torch.ones_like(tokens, dtype=torch.bool)
    logits = model(snippets, snippet_mask, tokens, token_mask)
    changed = snippets.clone()
    changed[~snippet_mask] = 5
    torch.testing.assert_close(model(changed, snippet_mask, tokens, token_mask), logits)


def test_decoder_is_causal():
    model = tiny_staria()
    snippets, snippet_mask = snippet_batch()
    tokens = torch.randint(3, VOCAB, (2, 12))
    token_mask = torch.ones_like(tokens, dtype=torch.bool)
    logits = model(snippets, snippet_mask, tokens, token_mask)
    later_changed = tokens.clone()
    later_changed[:, 8:] = 4
    torch.testing.assert_close(
        model(snippets, snippet_mask, later_changed, token_mask)[:, :8], logits[:, :8]
    )


def test_activation_checkpointing_and_flash_compute_the_same():
    plain = tiny_staria()
    for options in ({"activation_checkpointing": True}, {"attn_flash": True}):
        other = tiny_staria(seed=1, **options)
        other.load_state_dict(plain.state_dict())
        snippets, snippet_mask = snippet_batch()
        tokens = torch.randint(3, VOCAB, (2, 12))
        token_mask = torch.ones_like(tokens, dtype=torch.bool)
        plain.train()
        other.train()
        expected = plain(snippets, snippet_mask, tokens, token_mask)
        got = other(snippets, snippet_mask, tokens, token_mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        expected.square().mean().backward()
        got.square().mean().backward()
        grad = dict(plain.named_parameters())["decoder.net.token_emb.emb.weight"].grad
        other_grad = other.decoder.net.token_emb.emb.weight.grad
        torch.testing.assert_close(other_grad, grad, atol=1e-5, rtol=1e-4)
        plain.zero_grad()


def test_cached_generation_equals_uncached_and_encodes_once():
    model = tiny_staria()
    with torch.no_grad():
        for gate in model.decoder.cross_attention_gates():
            gate.fill_(0.5)
    snippets, snippet_mask = snippet_batch()
    prompt = torch.randint(3, VOCAB, (2, 5))
    encoder_calls = []
    model.encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    cached = model.generate(snippets, snippet_mask, prompt, 10, GREEDY)
    assert len(encoder_calls) == 1
    uncached = model.generate(snippets, snippet_mask, prompt, 10, replace(GREEDY, cache_kv=False))
    assert cached.shape == (2, 10)
    assert torch.equal(cached, uncached)
    assert not model.training


def test_each_sample_stops_at_its_own_eos():
    baseline = tiny_net("baseline_tiny", vocab=VOCAB, seed=3, max_seq_len=64).eval()
    prompt = torch.randint(3, VOCAB, (3, 4))
    free = baseline.generate(prompt, 12, GREEDY)
    row0 = free[0].tolist()
    eos = [t for k, t in enumerate(row0) if t not in row0[:k] and t not in prompt][1]
    stopped = baseline.generate(prompt, 12, replace(GREEDY, eos_id=eos, pad_id=2))
    for row, free_row in zip(stopped, free, strict=True):
        hits = (free_row == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(free_row)
        assert torch.equal(row[:end], free_row[:end])
        assert (row[end:] == 2).all()
    assert (stopped[0] == 2).any()
    with pytest.raises(ValueError, match="contains the eos id"):
        baseline.generate(prompt, 12, DecodingSpec(eos_id=int(prompt[1, 2])))


def test_learned_positions_refuse_cached_decoding_past_context():
    baseline = tiny_net("baseline_tiny", vocab=VOCAB, seed=None, max_seq_len=16)
    with pytest.raises(ContextTooLongError, match="max_seq_len=16"):
        baseline.generate(torch.randint(3, VOCAB, (1, 10)), 7)
    rotary = tiny_net("baseline_tiny", vocab=VOCAB, seed=None, max_seq_len=16, aria_layout=True)
    assert rotary.generate(torch.randint(3, VOCAB, (1, 10)), 7, NO_EOS).shape == (1, 7)


def test_logits_filter_is_explicit():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.equal(LogitsFilter()(logits), logits)
    assert torch.isfinite(LogitsFilter(top_k=2)(logits)).sum() == 2
    assert torch.isfinite(LogitsFilter(min_p=0.3)(logits)).sum() == 2  # e^-1 > 0.3 > e^-2
    assert torch.isfinite(LogitsFilter(top_p=0.5)(logits)).sum() == 1
    torch.testing.assert_close(LogitsFilter(temperature=2.0)(logits), logits / 2)


def test_classifier_heads():
    classifier = tiny_net("classifier_tiny", vocab=VOCAB, encoder={"max_seq_len": 32}, num_styles=5)
    tokens = torch.randint(3, VOCAB, (2, 20))
    out = classifier(tokens, torch.ones_like(tokens, dtype=torch.bool))
    assert out.form.shape == (2, 9)
    assert out.style.shape == (2, 5)
    assert out.section.shape == (2, 20, 4)
