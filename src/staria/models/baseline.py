"""Decoder-only baseline: Staria's causal LM without snippet cross-attention."""

from __future__ import annotations

import torch
from torch import Tensor

from staria.models.autoregressive import DEFAULT_DECODING, DecodingSpec, generate_with_cache
from staria.models.decoder import CausalDecoder
from staria.models.xtransformers import build_decoder_net
from staria.tokenizer.vocabulary import VOCAB_SIZE


class DecoderOnlyBaseline(CausalDecoder):
    """x-transformers decoder LM; the snippets reach it as a token prompt instead.

    Full size (16 layers, 24 heads x dim_head 64 = 1536 wide, learned absolute positions over
    4,096, GELU feed-forward x4, untied head, 17,742 tokens) has 513,953,280 parameters.
    `aria_layout=True` gives Aria-medium's block so Aria weights load (`staria.models.pretrained`).
    `num_tokens` defaults to the tokenizer's vocabulary.
    """

    def __init__(
        self,
        num_tokens: int = VOCAB_SIZE,
        dim: int = 1536,
        depth: int = 16,
        heads: int = 24,
        dim_head: int = 64,
        max_seq_len: int = 4096,
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
            attn_flash=attn_flash,
            activation_checkpointing=activation_checkpointing,
        )

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
