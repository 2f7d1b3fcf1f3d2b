"""KV-cached sampling for the generative models, through x-transformers' AutoregressiveWrapper.

x-transformers filters with one function and a default top-k that keeps 10% of the vocabulary;
here every filter is explicit and off unless asked for, in the usual order: temperature, then
top-k, top-p (nucleus), min-p.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor
from x_transformers import AutoregressiveWrapper, TransformerWrapper
from x_transformers.autoregressive_wrapper import min_p as min_p_filter
from x_transformers.autoregressive_wrapper import top_k as top_k_filter
from x_transformers.autoregressive_wrapper import top_p as top_p_filter


class ContextTooLongError(ValueError):
    """Cached decoding would run past the learned absolute positions of a model."""


@dataclass(frozen=True)
class LogitsFilter:
    """Temperature and the truncation filters; `None` switches a filter off."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        logits = logits / self.temperature
        if self.top_k is not None:
            logits = top_k_filter(logits, k=self.top_k)
        if self.top_p is not None:
            logits = top_p_filter(logits, thres=self.top_p)
        if self.min_p is not None:
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
    """
    prompt_len = max(p.shape[-1] for p in prompt) if isinstance(prompt, list) else prompt.shape[-1]
    too_long = prompt_len + max_new_tokens > net.max_seq_len
    if decoding.cache_kv and too_long and not net.can_cache_kv_outside_max_seq_len:
        raise ContextTooLongError(
            f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds "
            f"max_seq_len={net.max_seq_len}: learned absolute positions cannot decode past "
            "it with a KV cache (use a rotary layout or a shorter request)"
        )
    for row, tokens in enumerate(prompt):
        if (tokens == decoding.eos_id).any():
            # x-transformers would treat it as already finished and cut the sample there.
            raise ValueError(f"prompt row {row} contains the eos id {decoding.eos_id}")
    wrapper = AutoregressiveWrapper(net, pad_value=decoding.pad_id)
    # A fresh wrapper is in training mode and restores that mode after generating.
    wrapper.train(net.training)
    logits_filter = decoding.logits_filter
    greedy = logits_filter.temperature == 0
    return wrapper.generate(
        prompt,
        max_new_tokens,
        eos_token=decoding.eos_id,
        temperature=0.0 if greedy else 1.0,
        filter_logits_fn=replace(logits_filter, temperature=1.0) if greedy else logits_filter,
        cache_kv=decoding.cache_kv,
        **net_kwargs,
    )
