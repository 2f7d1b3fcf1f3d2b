"""Snippet encoder: bidirectional x-transformers encoder -> token states and a pooled embedding."""

from __future__ import annotations

from torch import Tensor, nn

from staria.models.xtransformers import build_encoder_net
from staria.tokenizer.vocabulary import VOCAB_SIZE


class SnippetEncoder(nn.Module):
    """Encodes snippets [N,L] into token states [N,L,D] and a masked-mean pooled embedding [N,D].

    Full size: 6 layers, 8 heads x dim_head 192 = 1536 wide (x-transformers' default dim_head 64
    would make the attention only 512 wide), learned absolute positions over 256-token snippets.
    The decoder cross-attends to the states; contrastive pre-training uses the pooled embedding.
    `num_tokens` defaults to the tokenizer's vocabulary.
    """

    def __init__(
        self,
        num_tokens: int = VOCAB_SIZE,
        dim: int = 1536,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 192,
        max_seq_len: int = 256,
        attn_flash: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.net = build_encoder_net(
            num_tokens,
            dim,
            depth,
            heads,
            dim_head,
            max_seq_len,
            attn_flash=attn_flash,
            activation_checkpointing=activation_checkpointing,
        )

    def forward(self, snippets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(states [N,L,D], pooled [N,D]); an all-padding snippet pools to zeros."""
        states = self.net(snippets, mask=mask)
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return states, pooled
