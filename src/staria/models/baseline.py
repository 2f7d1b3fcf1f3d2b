"""Decoder-only baseline: Staria's causal LM without snippet cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from staria.models.autoregressive import DEFAULT_DECODING, DecodingSpec, generate_with_cache
from staria.models.decoder import CausalDecoder
from staria.models.xtransformers import build_decoder_net


@dataclass(eq=False, repr=False)
class DecoderOnlyBaseline(CausalDecoder):
    """x-transformers decoder LM; the snippets reach it as a token prompt instead.

    Full size (the defaults: 16 layers, 24 heads x dim_head 64 = 1536 wide, learned absolute
    positions over 4,096, GELU feed-forward x4, untied head, 17,742 tokens) has 513,953,280
    parameters. Arguments: `TrunkShape` and `aria_layout`.
    """

    aria_layout: bool = False

    def __post_init__(self) -> None:
        nn.Module.__init__(self)
        self.net = build_decoder_net(self, self.aria_layout)

    def forward(
        self, tokens: Tensor, token_mask: Tensor, return_embeddings: bool = False
    ) -> Tensor:
        """Logits [B,T,V] for tokens [B,T] (mask True on real tokens); with
        `return_embeddings`, the final hidden states [B,T,D] that `head` projects to logits."""
        return self.net(tokens, mask=token_mask, return_embeddings=return_embeddings)

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor | list[Tensor],
        max_new_tokens: int,
        decoding: DecodingSpec = DEFAULT_DECODING,
    ) -> Tensor:
        """Sample continuations; see `staria.models.autoregressive.generate_with_cache`."""
        return generate_with_cache(self.net, prompt, max_new_tokens, decoding)
