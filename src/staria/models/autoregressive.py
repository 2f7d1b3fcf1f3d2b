"""KV-cached sampling for the generative models, through x-transformers' AutoregressiveWrapper.

x-transformers filters with one function and a default top-k that keeps 10% of the vocabulary;
here every filter is explicit and off unless asked for, in the usual order: temperature, then
top-k, top-p (nucleus), min-p.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def generate_with_cache(
    net: TransformerWrapper,
    prompt: Tensor | list[Tensor],
    max_new_tokens: int,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    eos_id: int,
    pad_id: int,
    cache_kv: bool = True,
    **net_kwargs,
) -> Tensor:
    """Sample up to `max_new_tokens` after each prompt (rows of [B,T], or a list of 1-D prompts of
    different lengths); temperature 0 is greedy. Each sample stops at its own `eos_id`: the result
    [B, <=max_new_tokens] holds the eos and `pad_id` after it. `net_kwargs` (e.g. the
    cross-attention context) go to every forward; with `cache_kv` the keys and values of
    self- and cross-attention are computed once and reused.
    """
    prompt_len = max(p.shape[-1] for p in prompt) if isinstance(prompt, list) else prompt.shape[-1]
    too_long = prompt_len + max_new_tokens > net.max_seq_len
    if cache_kv and too_long and not net.can_cache_kv_outside_max_seq_len:
        raise ContextTooLongError(
            f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds "
            f"max_seq_len={net.max_seq_len}: learned absolute positions cannot decode past "
            "it with a KV cache (use a rotary layout or a shorter request)"
        )
    for row, tokens in enumerate(prompt):
        if (tokens == eos_id).any():
            # x-transformers would treat it as already finished and cut the sample there.
            raise ValueError(f"prompt row {row} contains the eos id {eos_id}")
    wrapper = AutoregressiveWrapper(net, pad_value=pad_id)
    # A fresh wrapper is in training mode and restores that mode after generating.
    wrapper.train(net.training)
    greedy = temperature == 0
    return wrapper.generate(
        prompt,
        max_new_tokens,
        eos_token=eos_id,
        temperature=0.0 if greedy else 1.0,
        filter_logits_fn=LogitsFilter(1.0 if greedy else temperature, top_k, top_p, min_p),
        cache_kv=cache_kv,
        **net_kwargs,
    )
