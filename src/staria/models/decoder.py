"""Causal decoders: what the baseline and Staria's decoder share, and the cross-attending one.

x-transformers has no gated cross-attention or adapters; `staria.models.xtransformers` adds them
to its `Decoder`. With the gates at zero and the adapters at their initial values, the decoder
computes exactly what the same decoder without cross-attention computes, which lets stage A
start at a pretrained model's behaviour; an open gate (`gate_init` > 0) suits training from
scratch, where a closed gate keeps the snippets' gradient small for many steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from x_transformers import TransformerWrapper

from staria.models.autoregressive import DEFAULT_DECODING, DecodingSpec, generate_with_cache
from staria.models.xtransformers import (
    Adapter,
    Bridge,
    GatedCrossAttention,
    TrunkShape,
    build_decoder_net,
    decoder_blocks,
    logits_head,
    norm_modules,
)


class CausalDecoder(TrunkShape, nn.Module):
    """An x-transformers causal LM (`net`) with the views training and loading need; its shape
    defaults (`TrunkShape`) are Aria-medium's: 16 layers, 24 heads x 64 = 1536 wide, 4,096
    positions. `aria_layout=True` gives Aria's block so Aria weights load (`models.pretrained`).
    """

    net: TransformerWrapper

    @property
    def head(self) -> nn.Linear:
        """The output projection, hidden [.., D] -> logits [.., V] (no bias)."""
        return logits_head(self.net)

    def blocks(self) -> list[list[nn.Module]]:
        return decoder_blocks(self.net)

    def norms(self) -> list[nn.Module]:
        return norm_modules(self.net)


@dataclass(eq=False, repr=False)
class CrossAttendingDecoder(CausalDecoder):
    """Staria's decoder: a causal LM over the piece that cross-attends to all snippet token states.

    Full size is Aria-medium's shape: 16 layers, 24 heads x dim_head 64 = 1536 wide, context 4,096.
    Each block is self-attention, gated cross-attention (tanh(gate) starts at tanh(`gate_init`)),
    feed-forward + adapter. Learned absolute positions (the default layout) stop cached decoding
    at `max_seq_len`. The context is `context_dim` wide (default `dim`); adapters have a
    bottleneck of `adapter_dim`. Arguments: `TrunkShape` and these.
    """

    context_dim: int | None = None
    adapter_dim: int = 96
    gate_init: float = 0.0
    aria_layout: bool = False

    def __post_init__(self) -> None:
        nn.Module.__init__(self)
        bridge = Bridge(self.context_dim or self.dim, self.adapter_dim, self.gate_init)
        self.net = build_decoder_net(self, self.aria_layout, bridge)

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

    def bridge_modules(self) -> list[nn.Module]:
        """The modules a pretrained decoder-only model lacks: gated cross-attention and adapters."""
        return [m for m in self.net.modules() if isinstance(m, GatedCrossAttention | Adapter)]

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
