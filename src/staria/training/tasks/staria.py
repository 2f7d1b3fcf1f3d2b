"""Staria: snippets -> encoder -> cross-attending decoder, LM loss on the piece's sequence."""

import torch

from staria.training.tasks.base import StepLoss, TrainingTask


class StariaTask(TrainingTask):
    """Generative batches with `snippets`; only tokens in `loss_mask` count."""

    def step_loss(self, batch: dict[str, torch.Tensor]) -> StepLoss:
        inputs = (batch["snippets"], batch["snippet_mask"], batch["tokens"], batch["token_mask"])
        return self.next_token_loss(batch, *inputs)
