"""Form / style / per-token section classifier on an encoder trunk (evaluation and wake-sleep)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from staria.models.encoder import SnippetEncoder
from staria.tokenizer import FORMS, SECTION_LETTERS

NUM_FORMS = len(FORMS)
NUM_SECTIONS = len(SECTION_LETTERS)


@dataclass
class ClassifierLogits:
    """Unnormalised scores: form [B,num_forms], style [B,num_styles], section [B,T,num_sections]."""

    form: Tensor
    style: Tensor
    section: Tensor


class SequenceClassifier(nn.Module):
    """A bidirectional encoder over a whole piece; form and style read the pooled embedding,
    the section head labels every token."""

    def __init__(
        self,
        encoder: SnippetEncoder,
        num_styles: int,
        num_forms: int = NUM_FORMS,
        num_sections: int = NUM_SECTIONS,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.form_head = nn.Linear(encoder.dim, num_forms)
        self.style_head = nn.Linear(encoder.dim, num_styles)
        self.section_head = nn.Linear(encoder.dim, num_sections)

    def forward(self, tokens: Tensor, token_mask: Tensor) -> ClassifierLogits:
        states, pooled = self.encoder(tokens, token_mask)
        return ClassifierLogits(
            form=self.form_head(pooled),
            style=self.style_head(pooled),
            section=self.section_head(states),
        )
