"""Snippet encoder: bidirectional x-transformers encoder -> token states and a pooled embedding."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from staria.models.xtransformers import TrunkShape, build_encoder_net


@dataclass(eq=False, repr=False)
class SnippetEncoder(TrunkShape, nn.Module):
    """Encodes snippets [N,L] into token states [N,L,D] and a masked-mean pooled embedding [N,D].

    Full size (the defaults): 6 layers, 8 heads x dim_head 192 = 1536 wide (x-transformers'
    default dim_head 64 would make the attention only 512 wide), learned absolute positions over
    256-token snippets. The decoder cross-attends to the states; contrastive pre-training uses the
    pooled embedding. Arguments: `TrunkShape`.
    """

    depth: int = 6
    heads: int = 8
    dim_head: int = 192
    max_seq_len: int = 256

    def __post_init__(self) -> None:
        nn.Module.__init__(self)
        self.net = build_encoder_net(self)

    def forward(self, snippets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(states [N,L,D], pooled [N,D]); an all-padding snippet pools to zeros."""
        states = self.net(snippets, mask=mask)
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return states, pooled
