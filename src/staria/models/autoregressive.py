"""Sampling for the generative models: static-cache decoding, or a full forward per token.

The loop is x-transformers' `AutoregressiveWrapper.generate` with its decoding replaced: with
`cache_kv`, `staria.models.static_cache.StaticCacheDecoder` keeps preallocated keys/values
(x-transformers' cache concatenates them anew at every step); without, each step reruns the net
over the last `max_seq_len` tokens. Prompts of different lengths are left-padded, and the pad
mask follows the window as it slides (`window_pad_counts`; x-transformers' wrapper kept masking
each row's original pad count at the window's start), so a prompt's greedy sample is the same
whatever the batch, prompt mix or cache length.

x-transformers filters with one function and a default top-k that keeps 10% of the vocabulary;
here every filter is explicit and off unless asked for, in the usual order: temperature, then
top-k, top-p (nucleus), min-p. Each filter's neutral value (top_k 0, top_p 1, min_p 0) is off
too: x-transformers' top-p at 1.0 still cuts the tail once float cumulative sums pass 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F
from x_transformers import TransformerWrapper

from staria.models.static_cache import StaticCacheDecoder
from staria.models.xtransformers import has_rotary, min_p_filter, top_k_filter, top_p_filter


class ContextTooLongError(ValueError):
    """Cached decoding would run past the learned absolute positions of a model."""


TEMPERATURE_RANGE = (0.1, 2.0)  # below 0.1 logits overflow in float16; 0 itself is greedy


class LogitsFilterError(ValueError):
    """A filter setting outside its range; `field` names it, the message gives the range."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}")
        self.field, self.value, self.reason = field, value, reason


@dataclass(frozen=True)
class LogitsFilter:
    """Temperature and the truncation filters; `None` switches a filter off. The one place
    their ranges are declared: temperature 0 (greedy) or within `TEMPERATURE_RANGE`, top_k >= 0,
    top_p in (0, 1], min_p in [0, 1); `LogitsFilterError` names the setting otherwise."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        low, high = TEMPERATURE_RANGE
        if self.temperature != 0 and not low <= self.temperature <= high:
            raise LogitsFilterError(
                "temperature", self.temperature, f"must be 0 (greedy) or lie in [{low}, {high}]"
            )
        if self.top_k is not None and self.top_k < 0:
            raise LogitsFilterError("top_k", self.top_k, "must be >= 0 or null")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise LogitsFilterError("top_p", self.top_p, "must lie in (0, 1] or null")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise LogitsFilterError("min_p", self.min_p, "must lie in [0, 1) or null")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __call__(self, logits: Tensor) -> Tensor:
        """Filtered logits [B, V] (temperature applied unless greedy)."""
        if not self.greedy and self.temperature != 1:
            logits = logits / self.temperature
        if self.top_k:  # None or 0: off
            logits = top_k_filter(logits, k=self.top_k)
        if self.top_p is not None and self.top_p < 1:
            logits = top_p_filter(logits, thres=self.top_p)
        if self.min_p:  # None or 0: off
            logits = min_p_filter(logits, min_p=self.min_p)
        return logits


@dataclass(frozen=True)
class DecodingSpec:
    """How every model's `generate` draws and stops: the logits filter (temperature 0 is greedy),
    the ids that end and pad a sample, and whether keys/values are cached."""

    logits_filter: LogitsFilter = LogitsFilter()
    eos_id: int = 1
    pad_id: int = 2
    cache_kv: bool = True


DEFAULT_DECODING = DecodingSpec()


def window_pad_counts(pad_counts: Tensor, length: int, max_seq_len: int) -> Tensor:
    """Left pads [B] still inside the last `max_seq_len` positions of `length` positions."""
    return (pad_counts - max(0, length - max_seq_len)).clamp(min=0)


def generate_with_cache(
    net: TransformerWrapper,
    prompt: Tensor | list[Tensor],
    max_new_tokens: int,
    decoding: DecodingSpec,
    **net_kwargs,
) -> Tensor:
    """Sample up to `max_new_tokens` after each prompt (rows of [B,T], or a list of 1-D prompts of
    different lengths). Each sample stops at its own eos: the result [B, <=max_new_tokens] holds
    the eos and pad after it. `net_kwargs` (e.g. the cross-attention context) go to every
    forward; with `cache_kv` the keys and values of self- and cross-attention are computed once.
    Past `max_seq_len` (rotary models) the last `max_seq_len` tokens are attended to.
    """
    prompts = list(prompt)
    prompt_len = max(p.shape[-1] for p in prompts)
    too_long = prompt_len + max_new_tokens > net.max_seq_len
    if decoding.cache_kv and too_long and not has_rotary(net):
        raise ContextTooLongError(
            f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds "
            f"max_seq_len={net.max_seq_len}: learned absolute positions cannot decode past "
            "it with a KV cache (use a rotary layout or a shorter request)"
        )
    for row, tokens in enumerate(prompts):
        if (tokens == decoding.eos_id).any():
            # it would count as already finished and be cut there
            raise ValueError(f"prompt row {row} contains the eos id {decoding.eos_id}")
    batch = len(prompts)
    if max_new_tokens < 1:
        return torch.empty(batch, 0, dtype=torch.long, device=prompts[0].device)
    out = torch.full(
        (batch, prompt_len + max_new_tokens), decoding.pad_id, device=prompts[0].device
    )  # left-padded prompts, then the samples
    for row, tokens in enumerate(prompts):
        out[row, prompt_len - tokens.shape[-1] : prompt_len] = tokens
    pad_counts = prompt_len - torch.tensor([p.shape[-1] for p in prompts], device=out.device)
    logits_filter = decoding.logits_filter
    finished = torch.zeros(batch, dtype=torch.bool, device=out.device)
    length = prompt_len  # tokens in `out` so far
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            cached = None
            if decoding.cache_kv:
                cached = StaticCacheDecoder(net, batch, out.shape[1], **net_kwargs)
                logits = cached.prefill(out[:, :length], pad_counts)
            else:
                logits = _window_logits(net, out[:, :length], pad_counts, net_kwargs)
            while True:
                logits = logits_filter(logits)
                if logits_filter.greedy:
                    sample = logits.argmax(dim=-1)
                else:
                    sample = torch.multinomial(F.softmax(logits, dim=-1), 1)[:, 0]
                out[:, length] = sample
                length += 1
                finished |= sample == decoding.eos_id
                if length == out.shape[1] or finished.all():
                    break
                if cached is not None:
                    logits = cached.step(sample)
                else:
                    logits = _window_logits(net, out[:, :length], pad_counts, net_kwargs)
    finally:
        net.train(was_training)
    new = out[:, prompt_len:length]
    after_eos = (new == decoding.eos_id).long().cumsum(dim=-1) - (new == decoding.eos_id).long()
    return new.masked_fill(after_eos > 0, decoding.pad_id)


def _window_logits(net: TransformerWrapper, out: Tensor, pad_counts: Tensor, net_kwargs) -> Tensor:
    """Next-token logits [B, V] from a full forward over the last `max_seq_len` tokens of `out`."""
    max_seq_len = net.max_seq_len
    pads = window_pad_counts(pad_counts, out.shape[1], max_seq_len)
    return net(
        out[:, -max_seq_len:],
        seq_start_pos=pads if pads.any() else None,  # no pad left: no mask to build
        **net_kwargs,
    )[:, -1]
