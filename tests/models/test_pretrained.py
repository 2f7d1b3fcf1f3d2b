"""Aria checkpoints load into the Aria-layout models and reproduce a reference Aria forward."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from staria.models import CrossAttendingDecoder, DecoderOnlyBaseline
from staria.models.pretrained import AriaCheckpointError, load_aria_weights

ARIA_VOCAB, VOCAB, DIM, HEADS, LAYERS, FF_MULT = 80, 95, 32, 2, 2, 4
D_HEAD = DIM // HEADS
SHAPE = {"dim": DIM, "depth": LAYERS, "heads": HEADS, "dim_head": D_HEAD, "max_seq_len": 64}


def random_aria_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under Aria's parameter names (norms away from identity, to test them too)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=generator) * scale + offset

    state = {
        "model.tok_embeddings.weight": rand(ARIA_VOCAB, DIM, scale=1.0),
        "model.out_layer_norm.weight": rand(DIM, offset=1.0),
        "model.out_layer_norm.bias": rand(DIM),
        "lm_head.weight": rand(ARIA_VOCAB, DIM),
    }
    for i in range(LAYERS):
        prefix = f"model.encode_layers.{i}."
        state |= {
            prefix + "mixed_qkv.weight": rand(3 * DIM, DIM),
            prefix + "att_proj_linear.weight": rand(DIM, DIM),
            prefix + "ff_gate_proj.weight": rand(FF_MULT * DIM, DIM),
            prefix + "ff_up_proj.weight": rand(FF_MULT * DIM, DIM),
            prefix + "ff_down_proj.weight": rand(DIM, FF_MULT * DIM),
            prefix + "norm1.weight": rand(DIM, offset=1.0),
            prefix + "norm1.bias": rand(DIM),
            prefix + "norm2.weight": rand(DIM, offset=1.0),
            prefix + "norm2.bias": rand(DIM),
        }
    return state


def aria_reference_logits(state: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Aria's TransformerLM forward (aria/model.py): pre-LayerNorm blocks, half-split rotary
    with base 500,000 over the full head, causal SDPA, SwiGLU feed-forward, untied head."""
    batch, length = tokens.shape
    inv_freq = 1.0 / (500_000 ** (torch.arange(0, D_HEAD, 2).float() / D_HEAD))
    angles = torch.outer(torch.arange(length).float(), inv_freq)[None, :, None]
    cos, sin = angles.cos(), angles.sin()

    def rotate(x):  # x [B, T, H, d]
        x1, x2 = x[..., : D_HEAD // 2], x[..., D_HEAD // 2 :]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def norm(x, name):
        return F.layer_norm(x, (DIM,), state[name + ".weight"], state[name + ".bias"])

    x = F.embedding(tokens, state["model.tok_embeddings.weight"])
    for i in range(LAYERS):
        p = f"model.encode_layers.{i}."
        h = norm(x, p + "norm1")
        q, k, v = (h @ state[p + "mixed_qkv.weight"].T).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, length, HEADS, D_HEAD) for t in (q, k, v))
        q, k, v = rotate(q).transpose(1, 2), rotate(k).transpose(1, 2), v.transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        att = att.transpose(1, 2).reshape(batch, length, DIM)
        x = x + att @ state[p + "att_proj_linear.weight"].T
        h = norm(x, p + "norm2")
        gate, up = h @ state[p + "ff_gate_proj.weight"].T, h @ state[p + "ff_up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ state[p + "ff_down_proj.weight"].T
    return norm(x, "model.out_layer_norm") @ state["lm_head.weight"].T


@pytest.fixture
def aria_checkpoint(tmp_path):
    state = random_aria_state()
    path = tmp_path / "aria-medium.safetensors"
    save_file(state, path)
    return path, state


def test_converted_decoder_only_matches_reference_aria_forward(aria_checkpoint):
    path, state = aria_checkpoint
    baseline = DecoderOnlyBaseline(VOCAB, aria_layout=True, **SHAPE).eval()
    extra_rows = baseline.net.token_emb.emb.weight[ARIA_VOCAB:].clone()
    load_aria_weights(baseline, path)
    tokens = torch.randint(0, ARIA_VOCAB, (2, 40))
    logits = baseline(tokens, torch.ones_like(tokens, dtype=torch.bool))
    expected = aria_reference_logits(state, tokens)
    torch.testing.assert_close(logits[..., :ARIA_VOCAB], expected, atol=1e-4, rtol=1e-4)
    # Staria's appended tokens keep their own embedding rows.
    assert torch.equal(baseline.net.token_emb.emb.weight[ARIA_VOCAB:], extra_rows)


def test_staria_decoder_with_zero_gates_equals_decoder_only(aria_checkpoint):
    path, _ = aria_checkpoint
    baseline = DecoderOnlyBaseline(VOCAB, aria_layout=True, **SHAPE).eval()
    decoder = CrossAttendingDecoder(VOCAB, adapter_dim=8, aria_layout=True, **SHAPE).eval()
    load_aria_weights(baseline, path)
    load_aria_weights(decoder, path)
    with torch.no_grad():
        decoder.net.token_emb.emb.weight.copy_(baseline.net.token_emb.emb.weight)
        decoder.net.to_logits.weight.copy_(baseline.net.to_logits.weight)
    tokens = torch.randint(0, VOCAB, (2, 30))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    context = torch.randn(2, 24, DIM)
    context_mask = torch.rand(2, 24) > 0.3
    assert torch.equal(decoder(tokens, mask, context, context_mask), baseline(tokens, mask))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = random_aria_state()
    del state["model.encode_layers.1.norm2.bias"]
    state["model.encode_layers.1.attn_bias"] = torch.zeros(3)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    baseline = DecoderOnlyBaseline(VOCAB, aria_layout=True, **SHAPE)
    with pytest.raises(AriaCheckpointError) as error:
        load_aria_weights(baseline, path)
    assert error.value.missing == ["model.encode_layers.1.norm2.bias"]
    assert error.value.unexpected == ["model.encode_layers.1.attn_bias"]
    assert str(path) in str(error.value)


def test_shape_mismatch_and_wrong_depth_are_reported(aria_checkpoint):
    path, _ = aria_checkpoint
    wider = DecoderOnlyBaseline(VOCAB, aria_layout=True, **(SHAPE | {"dim": 48, "dim_head": 24}))
    with pytest.raises(AriaCheckpointError, match="shape mismatches") as error:
        load_aria_weights(wider, path)
    assert any("mixed_qkv" in line for line in error.value.mismatched)
    deeper = DecoderOnlyBaseline(VOCAB, aria_layout=True, **(SHAPE | {"depth": 3}))
    with pytest.raises(AriaCheckpointError) as error:
        load_aria_weights(deeper, path)
    assert "model.encode_layers.2.mixed_qkv.weight" in error.value.missing


def test_missing_file_and_wrong_layout_are_clear_errors(tmp_path, aria_checkpoint):
    baseline = DecoderOnlyBaseline(VOCAB, aria_layout=True, **SHAPE)
    with pytest.raises(FileNotFoundError, match=r"nothing\.safetensors"):
        load_aria_weights(baseline, tmp_path / "nothing.safetensors")
    with pytest.raises(ValueError, match="aria_layout=True"):
        load_aria_weights(DecoderOnlyBaseline(VOCAB, **SHAPE), aria_checkpoint[0])
