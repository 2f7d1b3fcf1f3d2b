"""Form / style / per-token section classifier training (evaluation and wake-sleep use it)."""

import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from staria.data.datasets import IGNORE_INDEX
from staria.models.classifier import ClassifierLogits
from staria.training.tasks.base import StepLoss, TrainingTask


class ClassifierTask(TrainingTask):
    """Sum of three cross entropies; IGNORE_INDEX labels (unknown style, unlabelled token) skip."""

    data_task = "classification"

    reports_perplexity = False
    heads = ("form", "style", "section")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.accuracy = torch.nn.ModuleDict(
            {
                f"{split}_{head}": MulticlassAccuracy(
                    getattr(self.net, f"{head}_head").out_features, ignore_index=IGNORE_INDEX
                )
                for split in ("val", "test")
                for head in self.heads
            }
        )

    def _labels(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "form": batch["form_label"],
            "style": batch["style_label"],
            "section": batch["section_labels"],
        }

    def step_loss(self, batch: dict[str, torch.Tensor]) -> StepLoss:
        return self._loss(self.net(batch["tokens"], batch["token_mask"]), batch)

    def _loss(self, logits: ClassifierLogits, batch: dict[str, torch.Tensor]) -> StepLoss:
        labels = self._labels(batch)
        losses = [
            F.cross_entropy(getattr(logits, head).flatten(0, -2), labels[head].flatten())
            for head in self.heads
            if (labels[head] != IGNORE_INDEX).any()
        ]
        return StepLoss(torch.stack(losses).sum(), batch["token_mask"].sum())

    def evaluation_loss(self, split: str, batch: dict[str, torch.Tensor]) -> StepLoss:
        """Loss and per-head accuracy from one forward pass."""
        logits = self.net(batch["tokens"], batch["token_mask"])
        for head, label in self._labels(batch).items():
            metric = self.accuracy[f"{split}_{head}"]
            metric(getattr(logits, head).flatten(0, -2), label.flatten())
            self.log(f"{split}/{head}_accuracy", metric)
        return self._loss(logits, batch)
