"""Snippet-encoder pre-training: two views of a section should embed close, others apart."""

import torch
from torch.nn import functional as F

from staria.training.tasks.base import StepLoss, TrainingTask


def nt_xent(
    z_a: torch.Tensor, z_b: torch.Tensor, group: torch.Tensor, temperature: float
) -> torch.Tensor:
    """NT-Xent (SimCLR) over 2B embeddings; each view's positive is its pair, and other
    examples of the same `group` (the same section of the same piece) are not used as negatives."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=-1)
    similarity = z @ z.T / temperature
    groups = torch.cat([group, group])
    batch = z_a.size(0)
    positive = torch.arange(2 * batch, device=z.device).roll(batch)
    not_negative = groups[:, None] == groups[None, :]
    not_negative[torch.arange(2 * batch), positive] = False
    similarity = similarity.masked_fill(not_negative, float("-inf"))
    return F.cross_entropy(similarity, positive)


class ContrastiveTask(TrainingTask):
    """`net` is a SnippetEncoder; its pooled embeddings of `view_a`/`view_b` are compared."""

    data_task = "contrastive"

    reports_perplexity = False

    def __init__(self, *args, temperature: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def step_loss(self, batch: dict[str, torch.Tensor]) -> StepLoss:
        _, pooled_a = self.net(batch["view_a"], batch["view_a_mask"])
        _, pooled_b = self.net(batch["view_b"], batch["view_b_mask"])
        loss = nt_xent(pooled_a, pooled_b, batch["group"], self.temperature)
        count = batch["view_a_mask"].sum() + batch["view_b_mask"].sum()
        return StepLoss(loss, count)
