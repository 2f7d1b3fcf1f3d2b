"""Staria: snippets -> snippet encoder -> a decoder cross-attending to every snippet token."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from staria.models.autoregressive import DEFAULT_DECODING, DecodingSpec
from staria.models.decoder import CrossAttendingDecoder
from staria.models.encoder import SnippetEncoder


class StariaModel(nn.Module):
    """The hierarchical generator. Parameter names start with `encoder.` or `decoder.`."""

    def __init__(self, encoder: SnippetEncoder, decoder: CrossAttendingDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode_snippets(self, snippets: Tensor, snippet_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Snippets [B,S,L] -> cross-attention context [B,S*L,D] and its mask [B,S*L]:
        all snippets of a piece concatenated, padding masked out."""
        batch, num_snippets, snippet_len = snippets.shape
        states, _ = self.encoder(
            snippets.reshape(batch * num_snippets, snippet_len),
            snippet_mask.reshape(batch * num_snippets, snippet_len),
        )
        context = states.reshape(batch, num_snippets * snippet_len, states.shape[-1])
        return context, snippet_mask.reshape(batch, num_snippets * snippet_len)

    def forward(
        self,
        snippets: Tensor,
        snippet_mask: Tensor,
        tokens: Tensor,
        token_mask: Tensor,
        return_embeddings: bool = False,
    ) -> Tensor:
        """Logits [B,T,V] for the piece's tokens [B,T] given its snippets [B,S,L]; with
        `return_embeddings`, the decoder's final hidden states [B,T,D] (`head` projects)."""
        context, context_mask = self.encode_snippets(snippets, snippet_mask)
        return self.decoder(tokens, token_mask, context, context_mask, return_embeddings)

    @property
    def head(self) -> nn.Linear:
        """The decoder's output projection, hidden [.., D] -> logits [.., V]."""
        return self.decoder.head

    @torch.no_grad()
    def generate(
        self,
        snippets: Tensor,
        snippet_mask: Tensor,
        prompt: Tensor | list[Tensor],
        max_new_tokens: int,
        decoding: DecodingSpec = DEFAULT_DECODING,
    ) -> Tensor:
        """Sample a continuation of each prompt conditioned on its snippets; the encoder runs once
        per call and, with `cache_kv`, the cross-attention keys/values are computed once too."""
        was_training = self.training
        self.eval()
        context, context_mask = self.encode_snippets(snippets, snippet_mask)
        self.train(was_training)
        return self.decoder.generate(prompt, max_new_tokens, context, context_mask, decoding)
