"""Static-cache decoding for the nets `build_decoder_net` makes: one token per step, preallocated
keys/values, SDPA attention.

x-transformers' cached forward concatenates every layer's whole key/value cache at every step
and re-applies rotary positions to all cached keys, so a token's cost grows with the cache. This
path reads the same modules (embeddings, norms, projections, feed-forwards, adapters, gates) and
replaces only the attention bookkeeping: keys and values are written once into a buffer of the
decode's length, rotary positions are applied once per key, and each step attends over the
buffer with `scaled_dot_product_attention`. Cross-attention keys/values are computed once.

It computes what x-transformers' forward computes (tests/models/test_static_cache.py compares
logits and greedy samples, default and Aria layouts, left padding, windows past `max_seq_len`):
- left pads (`pad_counts`) are masked as keys, and learned absolute positions count from each
  row's first real token, as x-transformers' `seq_start_pos` does;
- a rotary model decoding past `max_seq_len` attends to the last `max_seq_len` keys. The buffer
  is then a ring of `max_seq_len` slots: rotary scores depend only on the distance between
  positions, so keys rotated at their absolute positions give the window's scores;
- a row whose context is all padding gets a zero cross-attention output, as x-transformers
  zeroes an entirely masked row.

Checked against x-transformers 2.31.10; `StaticCacheDecoder` refuses a net with any attention,
norm or residual feature it does not reproduce (`UnsupportedNetError`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from x_transformers import TransformerWrapper
from x_transformers.x_transformers import Attention, Residual, apply_rotary_pos_emb


class UnsupportedNetError(ValueError):
    """The net uses an x-transformers feature that static-cache decoding does not reproduce."""


def _plain_attention(attention: nn.Module, where: str) -> Attention:
    """The x-transformers `Attention` inside `attention` (unwrapping a checkpoint wrapper), checked
    to be a plain multi-head one: separate q/k/v projections, no gates, norms or memory."""
    inner = getattr(attention, "_checkpoint_wrapped_module", attention)
    if not isinstance(inner, Attention):
        raise UnsupportedNetError(
            f"{where}: {type(inner).__name__} is not an x-transformers Attention"
        )
    extras = {
        "kv_heads": inner.kv_heads != inner.heads,
        "to_v_gate": inner.to_v_gate is not None,
        "to_output_gate": inner.to_output_gate is not None,
        "to_v_head_gate": inner.to_v_head_gate is not None,
        "qk_norm": inner.qk_norm,
        "head_scale": inner.head_scale,
        "num_mem_kv": inner.num_mem_kv > 0,
        "latent attention": inner.use_latent_q or inner.use_latent_kv,
        "max_attend_past": inner.max_attend_past is not None,
        "sparse_topk": inner.sparse_topk is not None,
        "hybrid_module": inner.hybrid_module is not None,
        "partial rotary heads": inner.rotate_num_heads != inner.heads,
    }
    used = [name for name, on in extras.items() if on]
    if used:
        raise UnsupportedNetError(f"{where}: attention uses {', '.join(used)}")
    return inner


class _Block:
    """One layer of the stack: its pre-norm, its branch and what kind of branch it is."""

    def __init__(self, layer_type: str, norms: nn.ModuleList, branch: nn.Module, residual, where):
        if norms[1] is not None or norms[2] is not None:
            raise UnsupportedNetError(f"{where}: post-branch norms are not supported")
        if type(residual) is not Residual or residual.residual_scale is not None:
            raise UnsupportedNetError(f"{where}: only the plain residual is supported")
        if residual.scale_residual_constant != 1:
            raise UnsupportedNetError(f"{where}: a scaled residual is not supported")
        self.kind = layer_type
        self.norm = norms[0]
        self.branch = branch
        self.gate: nn.Parameter | None = None
        if layer_type == "a":
            self.attention = _plain_attention(branch, where)
        elif layer_type == "c":
            self.gate = getattr(branch, "cross_attn_gate", None)
            self.attention = _plain_attention(getattr(branch, "cross_attn", branch), where)


class StaticCacheDecoder:
    """Decoding state of one batch: `prefill` the prompts, then `step` one token at a time.

    net: a causal `TransformerWrapper` from `build_decoder_net`, in eval mode.
    batch, length: rows, and tokens per row over the whole decode (prompt + new tokens); the
    buffers hold min(length, max_seq_len) positions for a rotary net (a ring past it) and
    `length` for learned absolute positions, which cannot pass `max_seq_len`.
    context [B,C,Dc], context_mask [B,C] (True on real): what cross-attention reads.
    Raises `UnsupportedNetError` for a net this path does not reproduce, `ValueError` for a
    decode an absolute-position net cannot do.
    """

    def __init__(
        self,
        net: TransformerWrapper,
        batch: int,
        length: int,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> None:
        layers = net.attn_layers
        if getattr(net, "num_memory_tokens", 0) or not layers.causal:
            raise UnsupportedNetError("only causal nets without memory tokens are supported")
        if getattr(net, "l2norm_embed", False):
            raise UnsupportedNetError("l2-normed embeddings are not supported")
        self.net = net
        self.rotary = layers.rotary_pos_emb
        if self.rotary is None and length > net.max_seq_len:
            raise ValueError(
                f"{length} positions exceed max_seq_len={net.max_seq_len} of learned positions"
            )
        self.blocks = [
            _Block(kind, norms, branch, residual, f"layer {index} ({kind})")
            for index, (kind, (norms, branch, residual)) in enumerate(
                zip(layers.layer_types, layers.layers, strict=True)
            )
        ]
        self.batch, self.length = batch, length
        self.slots = min(length, net.max_seq_len) if self.rotary is not None else length
        weight = net.to_logits.weight
        self.self_kv: list[tuple[Tensor, Tensor]] = []
        for block in self.blocks:
            if block.kind == "a":
                attention = block.attention
                head_dim = attention.to_k.out_features // attention.heads
                shape = (batch, attention.heads, self.slots, head_dim)
                self.self_kv.append((weight.new_zeros(shape), weight.new_zeros(shape)))
        self.cross_kv = self._cross_keys_values(context, context_mask)
        self.key_is_real = torch.zeros(batch, self.slots, dtype=torch.bool, device=weight.device)
        self.pad_counts = torch.zeros(batch, dtype=torch.long, device=weight.device)
        self.position = 0  # tokens written so far
        self.positions = torch.arange(length, device=weight.device)
        if self.rotary is not None:
            self.rotary_freqs, _ = self.rotary(self.positions)

    def _cross_keys_values(self, context, context_mask) -> list[tuple[Tensor, Tensor, Tensor]]:
        if not any(block.kind == "c" for block in self.blocks):
            return []
        if context is None:
            raise ValueError("this net cross-attends: give context and context_mask")
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        # x-transformers gives a row with no real context a zero output: zero values, any mask
        has_context = context_mask.any(dim=-1)
        mask = (context_mask | ~has_context[:, None])[:, None, None, :]
        keep = has_context.to(context.dtype)[:, None, None, None]
        return [
            (
                self._heads(block.attention.to_k(context), block.attention),
                self._heads(block.attention.to_v(context), block.attention) * keep,
                mask,
            )
            for block in self.blocks
            if block.kind == "c"
        ]

    @staticmethod
    def _heads(x: Tensor, attention: Attention) -> Tensor:
        """[B, T, H*D] -> [B, H, T, D]."""
        batch, length, _ = x.shape
        return x.view(batch, length, attention.heads, -1).transpose(1, 2)

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        net = self.net
        x = net.token_emb(tokens)
        x = x + net.pos_emb(x, pos=positions, seq_start_pos=self.pad_counts)
        return net.project_emb(net.emb_dropout(net.post_emb_norm(x)))

    def _rotate(self, x: Tensor, start: int) -> Tensor:
        if self.rotary is None:
            return x
        return apply_rotary_pos_emb(x, self.rotary_freqs[:, start : start + x.shape[2]])

    def _forward(self, tokens: Tensor, start: int) -> Tensor:
        """Logits [B, V] after `tokens` [B, T] at positions start..start+T-1 (within one pass of
        the ring); writes their keys/values into the buffers."""
        length = tokens.shape[1]
        slot = start % self.slots
        written = slice(slot, slot + length)
        filled = min(start + length, self.slots)
        mask = self._self_mask(start, length, filled)
        causal = mask is None and length > 1
        x = self._embed(tokens, self.positions[start : start + length])
        cross = iter(self.cross_kv)
        cache = iter(self.self_kv)
        for block in self.blocks:
            inputs = block.norm(x)
            if block.kind == "a":
                attention = block.attention
                keys, values = next(cache)
                q = self._rotate(self._heads(attention.to_q(inputs), attention), start)
                keys[:, :, written] = self._rotate(
                    self._heads(attention.to_k(inputs), attention), start
                )
                values[:, :, written] = self._heads(attention.to_v(inputs), attention)
                attended = F.scaled_dot_product_attention(
                    q,
                    keys[:, :, :filled],
                    values[:, :, :filled],
                    mask,
                    is_causal=causal,
                    scale=attention.scale,
                )
                x = x + attention.to_out(attended.transpose(1, 2).flatten(2))
            elif block.kind == "c":
                attention = block.attention
                keys, values, context_mask = next(cross)
                q = self._heads(attention.to_q(inputs), attention)
                attended = F.scaled_dot_product_attention(
                    q, keys, values, context_mask, scale=attention.scale
                )
                out = attention.to_out(attended.transpose(1, 2).flatten(2))
                x = x + (out * block.gate.tanh() if block.gate is not None else out)
            else:
                x = x + block.branch(inputs)
        return self.net.to_logits(self.net.attn_layers.final_norm(x[:, -1]))

    def _self_mask(self, start: int, length: int, filled: int) -> Tensor | None:
        """Boolean [B,1,T,K] over the first `filled` slots: causal, left pads masked, each query
        its own key (so a pad row stays finite); None when plain causal attention is exact."""
        keys_real = self.key_is_real[:, :filled]
        if bool(keys_real.all()):
            return None
        device = keys_real.device
        slot = torch.arange(filled, device=device)
        last = start + length - 1
        key_positions = last - ((last - slot) % self.slots)  # the latest position in each slot
        query_positions = self.positions[start : start + length]
        causal = query_positions[:, None] >= key_positions[None, :]
        own = query_positions[:, None] == key_positions[None, :]
        return ((causal[None] & keys_real[:, None, :]) | own[None])[:, None]

    @torch.no_grad()
    def prefill(self, tokens: Tensor, pad_counts: Tensor) -> Tensor:
        """Run the left-padded prompts [B, T] (`pad_counts` [B] pads on the left of each row):
        logits [B, V] for the token after them. A rotary net's prompt longer than the window
        keeps its last `max_seq_len` tokens, as x-transformers' window does."""
        if self.position:
            raise RuntimeError("prefill runs once, before any step")
        length = tokens.shape[1]
        if length > self.slots:
            tokens = tokens[:, -self.slots :]
            pad_counts = (pad_counts - (length - self.slots)).clamp(min=0)
            length = self.slots
        self.pad_counts = pad_counts
        self.key_is_real[:, :length] = self.positions[None, :length] >= pad_counts[:, None]
        logits = self._forward(tokens, 0)
        self.position = length
        return logits

    @torch.no_grad()
    def step(self, token: Tensor) -> Tensor:
        """Append one token per row ([B] or [B, 1]): logits [B, V] for the next."""
        if self.position >= self.length:
            raise RuntimeError(f"the buffers hold {self.length} positions; all are used")
        self.key_is_real[:, self.position % self.slots] = True
        logits = self._forward(token.view(self.batch, 1), self.position)
        self.position += 1
        return logits
