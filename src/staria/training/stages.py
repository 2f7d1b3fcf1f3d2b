"""Staged training of a StariaModel: which parameters train at a step, and at which learning rate.

A: only the decoder's new cross-attention and adapters, and the decoder's norms, train; the
   encoder, the decoder's blocks, embeddings and head stay frozen (the pretrained decoder starts
   exactly where it was, since the gates start at zero).
B: A plus the decoder's blocks, unfrozen top block first: `unfreeze_top_k` more blocks every
   `unfreeze_every_n_steps` steps (the top k from step 0); embeddings and head stay frozen. A pure
   function of the global step, so a resumed run unfreezes exactly what the interrupted one had.
C: everything, the encoder included, with a learning rate per part (`lr_scale`).

The 15 tokens Staria adds to Aria's vocabulary (section, prompt and form tokens) have no
pretrained embedding, so with `train_new_token_rows` (default) stages A and B also train their
rows of the decoder's input embedding and output head, and only those rows: a gradient hook
zeroes every other row's gradient, and these two matrices get no weight decay in A and B, so the
pretrained rows stay exactly as they were.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from staria.models.staria import StariaModel
from staria.models.xtransformers import token_row_weights, token_rows
from staria.tokenizer import MusicTokenizerWithStyle
from staria.training.config import StageConfig

STAGES = ("A", "B", "C")
PARTS = ("encoder", "decoder", "new")  # `new`: cross-attention and adapters


class StageConfigError(ValueError):
    """A stage setting that cannot work (unknown stage, empty unfreezing schedule, unknown part)."""


def _parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [p for module in modules for p in module.parameters()]


@cache
def staria_new_token_ids() -> tuple[int, ...]:
    """The tokenizer's `staria_token_ids`, built once: the rows stages A and B train."""
    return MusicTokenizerWithStyle().staria_token_ids


def token_row_parameters(model: StariaModel) -> list[nn.Parameter]:
    """The decoder's matrices with a row per token: input embedding and output head."""
    return list(token_row_weights(model.decoder.net))


@dataclass(frozen=True)
class RowGradientMask:
    """Tensor hook: keeps the gradient of `rows` only, so an optimizer step moves only them."""

    rows: tuple[int, ...]

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(grad.shape[0], 1, dtype=grad.dtype, device=grad.device)
        keep[list(self.rows)] = 1
        return grad * keep


# A masked parameter carries its hook's handle with its own id: a copy (deepcopy, or a
# DDP-spawned process's unpickled model) carries the attribute but not the hook, and its id
# differs, so it counts as unmasked and gets its own hook.
_ROW_MASK_ATTRIBUTE = "_staria_row_mask"


def _row_mask(parameter: nn.Parameter) -> RemovableHandle | None:
    owner, handle = getattr(parameter, _ROW_MASK_ATTRIBUTE, (None, None))
    return handle if owner == id(parameter) else None


def _add_row_mask(parameter: nn.Parameter, rows: tuple[int, ...]) -> None:
    handle = parameter.register_hook(RowGradientMask(rows))
    setattr(parameter, _ROW_MASK_ATTRIBUTE, (id(parameter), handle))


def _remove_row_mask(parameter: nn.Parameter, handle: RemovableHandle) -> None:
    handle.remove()
    delattr(parameter, _ROW_MASK_ATTRIBUTE)


@dataclass
class StageSchedule(StageConfig):
    """One training stage (A, B or C): the `stage` group's settings (`StageConfig`, declared
    there once) checked, and the token rows stages A and B train."""

    new_token_ids: tuple[int, ...] = field(default_factory=staria_new_token_ids)

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
        """From the `stage` config group (a missing key takes the schema's default)."""
        return cls(**{**stage, "lr_scale": dict(stage.get("lr_scale") or {})})

    @property
    def masks_token_rows(self) -> bool:
        """Whether the embedding and head train only the new tokens' rows (stages A and B)."""
        return self.train_new_token_rows and self.name != "C"

    def unfrozen_blocks(self, num_blocks: int, global_step: int) -> int:
        """How many of the decoder's top blocks train at `global_step`."""
        if self.name == "A":
            return 0
        if self.name == "C":
            return num_blocks
        return min(num_blocks, self.unfreeze_top_k * (1 + self.phase(global_step)))

    def phase(self, global_step: int) -> int:
        """Changes exactly when the trainable parameters may: at stage B's unfreezing steps."""
        return global_step // self.unfreeze_every_n_steps if self.name == "B" else 0

    def trainable_parameters(self, model: StariaModel, global_step: int) -> list[nn.Parameter]:
        if self.name == "C":
            return list(model.parameters())
        decoder = model.decoder
        blocks = decoder.blocks()
        unfrozen = blocks[len(blocks) - self.unfrozen_blocks(len(blocks), global_step) :]
        modules = decoder.bridge_modules() + decoder.norms() + [m for b in unfrozen for m in b]
        token_rows = token_row_parameters(model) if self.masks_token_rows else []
        return _parameters(modules) + token_rows

    def apply(self, model: StariaModel, global_step: int) -> None:
        """Set `requires_grad` of every parameter for `global_step`, and mask the embedding's
        and head's gradients to the new tokens' rows in stages A and B."""
        trainable = {id(p) for p in self.trainable_parameters(model, global_step)}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in trainable)
        if any(i >= model.decoder.net.num_tokens for i in self.new_token_ids):
            rows = self.new_token_ids  # refused below, naming the id
        else:  # a compact vocabulary keeps them on other rows
            rows = token_rows(model.decoder.net, self.new_token_ids)
        for parameter in token_row_parameters(model):
            self._mask_rows(parameter, rows)

    def _mask_rows(self, parameter: nn.Parameter, rows: tuple[int, ...]) -> None:
        handle = _row_mask(parameter)
        if self.masks_token_rows and handle is None:
            if max(rows) >= parameter.shape[0]:
                raise StageConfigError(
                    f"train_new_token_rows: token id {max(rows)} is outside the "
                    f"model's vocabulary of {parameter.shape[0]}; set stage.train_new_token_rows"
                    "=false for a model without Staria's tokens"
                )
            _add_row_mask(parameter, rows)
        elif not self.masks_token_rows and handle is not None:
            _remove_row_mask(parameter, handle)

    def param_groups(self, model: StariaModel, base_lr: float) -> list[dict]:
        """Optimizer groups (`name`, `params`, `lr`) of every parameter this stage ever trains.

        Frozen parameters have no gradient, so AdamW leaves them (and their decay) alone. Per-part
        rates apply in stage C; stages A and B train their parameters at `base_lr`. The row-masked
        embedding and head form a `new_tokens` group without weight decay: decay would move the
        rows whose gradient is masked.
        """
        last_step = sys.maxsize  # B's schedule ends with every block unfrozen
        ever_trained = {id(p) for p in self.trainable_parameters(model, last_step)}
        new = {id(p) for p in _parameters(model.decoder.bridge_modules())}
        masked = token_row_parameters(model) if self.masks_token_rows else []
        token_rows = {id(p) for p in masked}
        by_part: dict[str, list[nn.Parameter]] = {part: [] for part in (*PARTS, "new_tokens")}
        for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
            for parameter in module.parameters():
                if id(parameter) in token_rows:
                    by_part["new_tokens"].append(parameter)
                elif id(parameter) in ever_trained:
                    by_part["new" if id(parameter) in new else part].append(parameter)
        groups = [
            {
                "name": part,
                "params": params,
                "lr": base_lr * (self.lr_scale.get(part, 1.0) if self.name == "C" else 1.0),
            }
            for part, params in by_part.items()
            if params
        ]
        for group in groups:
            if group["name"] == "new_tokens":
                group["weight_decay"] = 0.0
        return groups
