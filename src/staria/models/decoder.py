"""Causal decoders on x-transformers: the shared builder and the cross-attending Staria decoder.

x-transformers has no gated cross-attention, adapters or activation checkpointing, so this module
adds the smallest pieces on top of its `Decoder`: zero-gated cross-attention, bottleneck adapters
with a zero-initialised up projection, and torch's checkpoint wrapper around each layer. With the
gates and adapters at their initial values the decoder computes exactly what the same decoder
without cross-attention computes, which lets stage A start at a pretrained model's behaviour.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from x_transformers import Decoder, TransformerWrapper
from x_transformers.x_transformers import GLU, LayerNorm, RMSNorm, RotaryEmbedding

from staria.models.activation_checkpointing import checkpoint_layers
from staria.models.autoregressive import DEFAULT_DECODING, DecodingSpec, generate_with_cache

ARIA_ROTARY_BASE = 500_000


class GatedCrossAttention(nn.Module):
    """x-transformers cross-attention whose output is scaled by tanh(gate), gate initialised to 0.

    Parameter names contain `cross_attn` so stages and optimizers can find them.
    """

    def __init__(self, cross_attn: nn.Module) -> None:
        super().__init__()
        self.cross_attn = cross_attn
        self.cross_attn_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, **kwargs) -> tuple[Tensor, object]:
        out, intermediates = self.cross_attn(x, **kwargs)
        return out * self.cross_attn_gate.tanh(), intermediates


class Adapter(nn.Module):
    """Bottleneck adapter (down, GELU, up); its up projection starts at zero, so it adds nothing."""

    def __init__(self, dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck_dim)
        self.up = nn.Linear(bottleneck_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(nn.functional.gelu(self.down(x)))


class AdaptedFeedForward(nn.Module):
    """A feed-forward layer followed by a residual adapter on its output (Houlsby placement)."""

    def __init__(self, feed_forward: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.feed_forward = feed_forward
        self.adapter = adapter

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        out = self.feed_forward(x, **kwargs)
        return out + self.adapter(out)


def build_decoder_net(
    num_tokens: int,
    dim: int,
    depth: int,
    heads: int,
    dim_head: int,
    max_seq_len: int,
    *,
    aria_layout: bool = False,
    cross_attend: bool = False,
    context_dim: int | None = None,
    adapter_dim: int = 0,
    attn_flash: bool = False,
    activation_checkpointing: bool = False,
) -> TransformerWrapper:
    """The x-transformers causal LM that both the baseline and the Staria decoder are made of.

    Default layout = x-transformers defaults: learned absolute positions over `max_seq_len`, GELU
    feed-forward x4 with biases, bias-free LayerNorm, untied output head. `aria_layout=True` gives
    Aria's block instead: rotary positions (base 500,000, full head width, interleaved pairs),
    SwiGLU feed-forward x4 without biases, nn.LayerNorm with bias (as Aria's norm1/norm2).
    """
    layer_kwargs: dict = {"attn_dim_head": dim_head, "attn_flash": attn_flash}
    if aria_layout:
        layer_kwargs |= {
            "rotary_pos_emb": True,
            "rotary_emb_dim": dim_head,
            "ff_glu": True,
            "ff_swish": True,
            "ff_no_bias": True,
        }
    if cross_attend:
        layer_kwargs |= {"cross_attend": True, "cross_attn_dim_context": context_dim or dim}
    layers = Decoder(dim=dim, depth=depth, heads=heads, **layer_kwargs)
    if aria_layout:
        _to_aria_layout(layers, dim, dim_head)
    for layer_type, layer in zip(layers.layer_types, layers.layers, strict=True):
        if layer_type == "c":
            layer[1] = GatedCrossAttention(layer[1])
        elif layer_type == "f" and adapter_dim > 0:
            layer[1] = AdaptedFeedForward(layer[1], Adapter(dim, adapter_dim))
    if activation_checkpointing:
        checkpoint_layers(layers)
    return TransformerWrapper(num_tokens=num_tokens, max_seq_len=max_seq_len, attn_layers=layers)


def _to_aria_layout(layers: Decoder, dim: int, dim_head: int) -> None:
    """Swap the parts x-transformers cannot configure: rotary base, LayerNorm bias, GLU bias."""
    layers.rotary_pos_emb = RotaryEmbedding(dim_head, base=ARIA_ROTARY_BASE)
    for norms, _, _ in layers.layers:
        norms[0] = nn.LayerNorm(dim)
    layers.final_norm = nn.LayerNorm(dim)
    for module in layers.modules():
        if isinstance(module, GLU):
            module.proj.register_parameter("bias", None)


def decoder_blocks(net: TransformerWrapper) -> list[list[nn.Module]]:
    """The decoder's transformer blocks bottom to top, each the list of its layers' modules
    (norms, attention / cross-attention / feed-forward, residual)."""
    layers = net.attn_layers
    per_block = layers.len_default_block
    return [
        list(layers.layers[start : start + per_block])
        for start in range(0, len(layers.layers), per_block)
    ]


def norm_modules(module: nn.Module) -> list[nn.Module]:
    """Every normalisation layer inside `module` (x-transformers' and torch's)."""
    return [m for m in module.modules() if isinstance(m, LayerNorm | RMSNorm | nn.LayerNorm)]


class CrossAttendingDecoder(nn.Module):
    """Staria's decoder: a causal LM over the piece that cross-attends to all snippet token states.

    Full size is Aria-medium's shape: 16 layers, 24 heads x dim_head 64 = 1536 wide, context 4,096.
    Each block is self-attention, zero-gated cross-attention, feed-forward + adapter. Learned
    absolute positions (the default layout) stop cached decoding at `max_seq_len`.
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int = 1536,
        depth: int = 16,
        heads: int = 24,
        dim_head: int = 64,
        max_seq_len: int = 4096,
        context_dim: int | None = None,
        adapter_dim: int = 96,
        aria_layout: bool = False,
        attn_flash: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.net = build_decoder_net(
            num_tokens,
            dim,
            depth,
            heads,
            dim_head,
            max_seq_len,
            aria_layout=aria_layout,
            cross_attend=True,
            context_dim=context_dim,
            adapter_dim=adapter_dim,
            attn_flash=attn_flash,
            activation_checkpointing=activation_checkpointing,
        )

    def forward(
        self,
        tokens: Tensor,
        token_mask: Tensor,
        context: Tensor,
        context_mask: Tensor,
        return_embeddings: bool = False,
    ) -> Tensor:
        """Logits [B,T,V] for tokens [B,T] attending to context [B,C,Dc] (masks True on real);
        with `return_embeddings`, the final hidden states [B,T,D] that `head` projects."""
        return self.net(
            tokens,
            mask=token_mask,
            context=context,
            context_mask=context_mask,
            return_embeddings=return_embeddings,
        )

    @property
    def head(self) -> nn.Linear:
        """The output projection, hidden [.., D] -> logits [.., V] (no bias)."""
        return self.net.to_logits

    def blocks(self) -> list[list[nn.Module]]:
        return decoder_blocks(self.net)

    def bridge_modules(self) -> list[nn.Module]:
        """The modules a pretrained decoder-only model lacks: gated cross-attention and adapters."""
        return [m for m in self.net.modules() if isinstance(m, GatedCrossAttention | Adapter)]

    def norms(self) -> list[nn.Module]:
        return norm_modules(self.net)

    def cross_attention_gates(self) -> list[nn.Parameter]:
        return [m.cross_attn_gate for m in self.net.modules() if isinstance(m, GatedCrossAttention)]

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor | list[Tensor],
        max_new_tokens: int,
        context: Tensor,
        context_mask: Tensor,
        decoding: DecodingSpec = DEFAULT_DECODING,
    ) -> Tensor:
        """Sample continuations; see `staria.models.autoregressive.generate_with_cache`."""
        return generate_with_cache(
            self.net, prompt, max_new_tokens, decoding, context=context, context_mask=context_mask
        )
