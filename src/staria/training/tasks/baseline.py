"""Decoder-only baseline: the prompt is part of the token stream, loss on the sequence only."""

import torch

from staria.training.tasks.base import StepLoss, TrainingTask


class BaselineTask(TrainingTask):
    """Batches `<PROMPT_START> ... <PROMPT_END> sequence`; `loss_mask` skips the prompt."""

    data_layout = "baseline"

    def step_loss(self, batch: dict[str, torch.Tensor]) -> StepLoss:
        return self.next_token_loss(batch, batch["tokens"], batch["token_mask"])


class UnconditionalTask(BaselineTask):
    """The same decoder-only model on the sequence alone, no snippets anywhere: the control a
    snippet-conditioned model is measured against, and a decoder pretraining for Staria whose
    positions are the Staria decoder's (`init_decoder_from`)."""

    data_layout = "unconditional"
