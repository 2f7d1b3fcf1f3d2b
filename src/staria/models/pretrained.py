"""Load EleutherAI Aria checkpoints (safetensors) into the Aria-layout Staria models.

Aria's block (aria/model.py, `FusedEncoderBlock`): x + att(norm1(x)), then x + ff(norm2(x)), with
nn.LayerNorm (weight and bias, eps 1e-5); `mixed_qkv` [3D,D] splits into q, k, v in that order;
rotary on the full head, base 500,000, rotating the two halves of each head (x[:d/2], x[d/2:]);
causal SDPA with scale dim_head^-0.5; `att_proj_linear` out; feed-forward
ff_down_proj(silu(ff_gate_proj(x)) * ff_up_proj(x)); no linear biases; final `out_layer_norm`,
untied `lm_head`. x-transformers rotates interleaved pairs (x[2j], x[2j+1]) instead, so q and k
rows are permuted within each head; its GLU computes up * silu(gate) from one [up; gate] matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from x_transformers import TransformerWrapper

from staria.models.baseline import DecoderOnlyBaseline
from staria.models.decoder import CrossAttendingDecoder
from staria.models.staria import StariaModel
from staria.models.xtransformers import (
    aria_trunk,
    block_parts,
    glu_projections,
    token_row_weights,
)

ModelT = TypeVar("ModelT", bound=nn.Module)


class AriaCheckpointError(ValueError):
    """An Aria checkpoint that does not fit the model: names the file and every key at fault."""

    def __init__(
        self,
        path: Path,
        missing: list[str] = (),
        unexpected: list[str] = (),
        mismatched: list[str] = (),
        reason: str = "",
    ) -> None:
        self.path, self.missing, self.unexpected, self.mismatched = (
            path,
            list(missing),
            list(unexpected),
            list(mismatched),
        )
        lines = [f"Aria checkpoint {path} does not fit the model{': ' + reason if reason else ''}"]
        for title, keys in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", self.mismatched),
        ):
            if keys:
                lines.append(f"{title} ({len(keys)}): {', '.join(keys)}")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class _Fill:
    """One model tensor and how to build it from Aria tensors (`build(*sources)`)."""

    target: Tensor
    sources: tuple[str, ...]
    build: Callable[..., Tensor] = lambda tensor: tensor
    vocab_rows: bool = False  # the checkpoint may hold fewer rows (Aria's smaller vocabulary)

    def value(self, state: dict[str, Tensor]) -> Tensor:
        return self.build(*(state[key] for key in self.sources))

    def fits(self, state: dict[str, Tensor]) -> bool:
        try:
            value = self.value(state)
        except RuntimeError:
            return False
        if self.vocab_rows:
            rows_fit = value.shape[0] <= self.target.shape[0]
            return rows_fit and value.shape[1:] == self.target.shape[1:]
        return value.shape == self.target.shape


def _rotary_pairs_interleaved(heads: int, dim_head: int) -> Callable[[Tensor, int], Tensor]:
    """q/k rows of `mixed_qkv` part `index`, reordered from Aria's half-split rotary pairs onto
    x-transformers' interleaved ones."""
    half = torch.arange(dim_head // 2)
    order = torch.stack((half, half + dim_head // 2), dim=-1).flatten()

    def rows(mixed_qkv: Tensor, index: int) -> Tensor:
        weight = mixed_qkv.chunk(3, dim=0)[index]
        return weight.reshape(heads, dim_head, -1)[:, order].reshape(heads * dim_head, -1)

    return rows


def aria_fills(net: TransformerWrapper) -> list[_Fill]:
    """How every pretrained tensor of an Aria-layout `net` is built from Aria checkpoint keys."""
    final_norm, heads, dim_head = aria_trunk(net)
    rotary_rows = _rotary_pairs_interleaved(heads, dim_head)
    embedding, head = token_row_weights(net)
    fills = [
        _Fill(embedding, ("model.tok_embeddings.weight",), vocab_rows=True),
        _Fill(head, ("lm_head.weight",), vocab_rows=True),
        _Fill(final_norm.weight, ("model.out_layer_norm.weight",)),
        _Fill(final_norm.bias, ("model.out_layer_norm.bias",)),
    ]
    for index, (attn_norm, attn, ff_norm, ff) in enumerate(block_parts(net)):
        up_gate, down = glu_projections(ff)
        key = f"model.encode_layers.{index}.{{}}".format
        fills += [
            _Fill(attn.to_q.weight, (key("mixed_qkv.weight"),), lambda w: rotary_rows(w, 0)),
            _Fill(attn.to_k.weight, (key("mixed_qkv.weight"),), lambda w: rotary_rows(w, 1)),
            _Fill(attn.to_v.weight, (key("mixed_qkv.weight"),), lambda w: w.chunk(3, dim=0)[2]),
            _Fill(attn.to_out.weight, (key("att_proj_linear.weight"),)),
            _Fill(attn_norm.weight, (key("norm1.weight"),)),
            _Fill(attn_norm.bias, (key("norm1.bias"),)),
            _Fill(ff_norm.weight, (key("norm2.weight"),)),
            _Fill(ff_norm.bias, (key("norm2.bias"),)),
            # x-transformers' GLU: up * silu(gate) from one [up; gate] projection.
            _Fill(
                up_gate.weight,
                (key("ff_up_proj.weight"), key("ff_gate_proj.weight")),
                lambda up, gate: torch.cat((up, gate), dim=0),
            ),
            _Fill(down.weight, (key("ff_down_proj.weight"),)),
        ]
    return fills


def _target_net(model: nn.Module) -> TransformerWrapper:
    if isinstance(model, StariaModel):
        return model.decoder.net
    if isinstance(model, DecoderOnlyBaseline | CrossAttendingDecoder):
        return model.net
    raise TypeError(f"cannot load Aria weights into {type(model).__name__}")


@torch.no_grad()
def load_aria_weights(model: nn.Module, path: str | Path) -> None:
    """Fill an Aria-layout model (baseline, Staria decoder or StariaModel) from an Aria checkpoint.

    Aria's 17,727-token vocabulary fills the first rows of embedding and head; Staria's 15 added
    tokens keep their initialisation. Cross-attention, adapters and the encoder are untouched, so
    with zero gates a Staria decoder computes the pretrained model's logits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Aria checkpoint {path} not found: place the safetensors file there (no download)"
        )
    state = load_file(path)
    fills = aria_fills(_target_net(model))
    expected = {key for fill in fills for key in fill.sources}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise AriaCheckpointError(path, missing, unexpected)
    mismatched = sorted(
        f"{', '.join(fill.sources)} {[tuple(state[k].shape) for k in fill.sources]} "
        f"-> model {tuple(fill.target.shape)}"
        for fill in fills
        if not fill.fits(state)
    )
    if mismatched:
        raise AriaCheckpointError(path, mismatched=mismatched)
    for fill in fills:
        value = fill.value(state)
        fill.target[: value.shape[0]] = value.to(fill.target.dtype)


def with_aria_weights(model: ModelT, aria_weights: str | None) -> ModelT:
    """`model` with Aria weights loaded from `aria_weights` (None keeps its initialisation);
    the `_target_` of the Aria-layout net configs, so a path override is all a run needs."""
    if aria_weights is not None:
        load_aria_weights(model, aria_weights)
    return model
