"""Staged training of a StariaModel: which parameters train at a step, and at which learning rate.

A: only the decoder's new cross-attention and adapters, and the decoder's norms, train; the
   encoder, the decoder's blocks, embeddings and head stay frozen (the pretrained decoder starts
   exactly where it was, since the gates start at zero).
B: A plus the decoder's blocks, unfrozen top block first: `unfreeze_top_k` more blocks every
   `unfreeze_every_n_steps` steps (the top k from step 0); embeddings and head stay frozen. A pure
   function of the global step, so a resumed run unfreezes exactly what the interrupted one had.
C: everything, the encoder included, with a learning rate per part (`lr_scale`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from staria.models.staria import StariaModel

STAGES = ("A", "B", "C")
PARTS = ("encoder", "decoder", "new")  # `new`: cross-attention and adapters


class StageConfigError(ValueError):
    """A stage setting that cannot work (unknown stage, empty unfreezing schedule, unknown part)."""


def _parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [p for module in modules for p in module.parameters()]


@dataclass(frozen=True)
class StageSchedule:
    """One training stage (A, B or C) and its unfreezing / learning-rate settings."""

    name: str
    unfreeze_top_k: int = 1
    unfreeze_every_n_steps: int = 100
    lr_scale: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in STAGES:
            raise StageConfigError(f"stage name {self.name!r} is not one of {STAGES}")
        if self.name == "B" and (self.unfreeze_top_k < 1 or self.unfreeze_every_n_steps < 1):
            raise StageConfigError(
                f"stage B needs unfreeze_top_k >= 1 and unfreeze_every_n_steps >= 1, got "
                f"{self.unfreeze_top_k} and {self.unfreeze_every_n_steps}"
            )
        unknown = set(self.lr_scale) - set(PARTS)
        if unknown:
            raise StageConfigError(f"lr_scale has unknown parts {sorted(unknown)}; use {PARTS}")

    @classmethod
    def from_config(cls, stage: Mapping) -> StageSchedule:
        """From the `stage` config group: name, unfreeze_top_k, unfreeze_every_n_steps, lr_scale."""
        return cls(
            name=stage["name"],
            unfreeze_top_k=stage.get("unfreeze_top_k", 1),
            unfreeze_every_n_steps=stage.get("unfreeze_every_n_steps", 100),
            lr_scale=dict(stage.get("lr_scale") or {}),
        )

    def unfrozen_blocks(self, num_blocks: int, global_step: int) -> int:
        """How many of the decoder's top blocks train at `global_step`."""
        if self.name == "A":
            return 0
        if self.name == "C":
            return num_blocks
        steps_done = 1 + global_step // self.unfreeze_every_n_steps
        return min(num_blocks, self.unfreeze_top_k * steps_done)

    def trainable_parameters(self, model: StariaModel, global_step: int) -> list[nn.Parameter]:
        if self.name == "C":
            return list(model.parameters())
        decoder = model.decoder
        blocks = decoder.blocks()
        unfrozen = blocks[len(blocks) - self.unfrozen_blocks(len(blocks), global_step) :]
        modules = decoder.bridge_modules() + decoder.norms() + [m for b in unfrozen for m in b]
        return _parameters(modules)

    def apply(self, model: StariaModel, global_step: int) -> None:
        """Set `requires_grad` of every parameter for `global_step`."""
        trainable = {id(p) for p in self.trainable_parameters(model, global_step)}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in trainable)

    def param_groups(self, model: StariaModel, base_lr: float) -> list[dict]:
        """Optimizer groups (`name`, `params`, `lr`) of every parameter this stage ever trains.

        Frozen parameters have no gradient, so AdamW leaves them (and their decay) alone. Per-part
        rates apply in stage C; stages A and B train their parameters at `base_lr`.
        """
        last_step = sys.maxsize  # B's schedule ends with every block unfrozen
        ever_trained = {id(p) for p in self.trainable_parameters(model, last_step)}
        new = {id(p) for p in _parameters(model.decoder.bridge_modules())}
        by_part: dict[str, list[nn.Parameter]] = {part: [] for part in PARTS}
        for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
            for parameter in module.parameters():
                if id(parameter) in ever_trained:
                    by_part["new" if id(parameter) in new else part].append(parameter)
        return [
            {
                "name": part,
                "params": params,
                "lr": base_lr * (self.lr_scale.get(part, 1.0) if self.name == "C" else 1.0),
            }
            for part, params in by_part.items()
            if params
        ]
