"""Batched sampling of whole pieces from a generative model, one prompt per sample.

The filters themselves (temperature, top-k, top-p, min-p) are `staria.models.autoregressive`'s
explicit wrapper around x-transformers' functions; this module validates their settings, groups
prompts into batches, and cuts each sample at its own `<E>` or at `max_length`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from staria.data.collate import Collator
from staria.generation.config import SamplingConfig
from staria.generation.prompts import Prompt
from staria.models import DecoderOnlyBaseline, StariaModel
from staria.models.autoregressive import DecodingSpec, LogitsFilter, LogitsFilterError


class SamplingConfigError(ValueError):
    """A sampling setting outside its range; the message names the config key and value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"{key}={value!r}: {reason}")
        self.key = key


@dataclass
class SamplingSettings(SamplingConfig):
    """How tokens are drawn (the `sampling` config's fields, declared there once), checked:
    `None` or a filter's neutral value (top_k 0, top_p 1, min_p 0) switches it off, and
    `max_length` bounds the decoder sequence of a sample (its start included; a decoder-only
    prompt block is not counted). `SamplingConfigError` names the key out of range."""

    def __post_init__(self) -> None:
        try:
            self.logits_filter  # noqa: B018 - its ranges are checked where they are declared
        except LogitsFilterError as error:
            raise SamplingConfigError(
                f"sampling.{error.field}", error.value, error.reason
            ) from None
        if self.max_length < 1:
            raise SamplingConfigError("sampling.max_length", self.max_length, "must be >= 1")

    @property
    def logits_filter(self) -> LogitsFilter:
        return LogitsFilter(self.temperature, self.top_k, self.top_p, self.min_p)


@dataclass(frozen=True)
class SampledPiece:
    """One sample's decoder sequence (start + generated tokens, through `<E>` when emitted)."""

    prompt: Prompt
    token_ids: np.ndarray
    ended_with_eos: bool


@dataclass(frozen=True)
class SamplingTiming:
    """Wall time of the model calls and how many tokens they produced."""

    seconds: float
    generated_tokens: int
    batches: int

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def _snippet_batch(prompts: Sequence[Prompt], pad_id: int, device: torch.device):
    """Snippets [B,S,L] and mask, padded as in training; a prompt without snippets (from
    scratch) gets one all-pad row that attention masks out."""
    if not any(prompt.snippets for prompt in prompts):
        shape = (len(prompts), 1, 1)
        return (
            torch.full(shape, pad_id, dtype=torch.long, device=device),
            torch.zeros(shape, dtype=torch.bool, device=device),
        )
    batch = Collator(pad_id)([{"snippets": list(prompt.snippets)} for prompt in prompts])
    return batch["snippets"].to(device), batch["snippet_mask"].to(device)


def _sample_batch(
    model: StariaModel | DecoderOnlyBaseline,
    prompts: Sequence[Prompt],
    settings: SamplingSettings,
    *,
    eos_id: int,
    pad_id: int,
    device: torch.device,
    cache_kv: bool,
) -> torch.Tensor:
    inputs = [torch.as_tensor(p.model_prompt, dtype=torch.long, device=device) for p in prompts]
    shortest_start = min(len(prompt.decoder_start) for prompt in prompts)
    max_new_tokens = settings.max_length - shortest_start
    if max_new_tokens < 1:
        raise SamplingConfigError(
            "sampling.max_length",
            settings.max_length,
            f"leaves no room after a {shortest_start}-token piece start",
        )
    decoding = DecodingSpec(settings.logits_filter, eos_id=eos_id, pad_id=pad_id, cache_kv=cache_kv)
    if isinstance(model, StariaModel):
        snippets, snippet_mask = _snippet_batch(prompts, pad_id, device)
        return model.generate(snippets, snippet_mask, inputs, max_new_tokens, decoding)
    return model.generate(inputs, max_new_tokens, decoding)


def sample_pieces(
    model: StariaModel | DecoderOnlyBaseline,
    prompts: Sequence[Prompt],
    settings: SamplingSettings,
    *,
    batch_size: int,
    eos_id: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    cache_kv: bool = True,
) -> tuple[list[SampledPiece], SamplingTiming]:
    """Sample one piece per prompt, `batch_size` at a time with the KV cache. Each sample ends
    at its own first `<E>` or when its decoder sequence reaches `settings.max_length`."""
    if batch_size < 1:
        raise SamplingConfigError("batch_size", batch_size, "must be >= 1")
    device = torch.device(device)
    pieces: list[SampledPiece] = []
    seconds, generated, batches = 0.0, 0, 0
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        started = time.perf_counter()
        new_tokens = _sample_batch(
            model, batch, settings, eos_id=eos_id, pad_id=pad_id, device=device, cache_kv=cache_kv
        ).cpu()
        seconds += time.perf_counter() - started
        batches += 1
        for prompt, row in zip(batch, new_tokens.numpy(), strict=True):
            room = max(settings.max_length - len(prompt.decoder_start), 0)
            row = row[:room]
            eos_at = np.flatnonzero(row == eos_id)
            ended = len(eos_at) > 0
            row = row[: eos_at[0] + 1] if ended else row
            generated += len(row)
            ids = np.concatenate([prompt.decoder_start, row]).astype(np.int64)
            pieces.append(SampledPiece(prompt, ids, ended))
    return pieces, SamplingTiming(seconds, generated, batches)
