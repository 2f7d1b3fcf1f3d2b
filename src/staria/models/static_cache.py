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

from staria.models.xtransformers import (
    AbsolutePositionalEmbedding,
    Attention,
    Residual,
    always,
    apply_rotary_pos_emb,
    unwrap_branch,
)
from staria.models.xtransformers import LayerNorm as XLayerNorm


class UnsupportedNetError(ValueError):
    """The net uses an x-transformers feature that static-cache decoding does not reproduce."""


def _plain_attention(attention: nn.Module, where: str) -> Attention:
    """The x-transformers `Attention` inside `attention` (unwrapping a checkpoint wrapper), checked
    to be a plain multi-head one: separate q/k/v projections, no gates, norms or memory."""
    inner = unwrap_branch(attention)
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


class _Norm:
    """A pre-norm as one `F.layer_norm` call (torch's LayerNorm, x-transformers' bias-free one),
    or the module itself for any other norm."""

    def __init__(self, norm: nn.Module) -> None:
        self.module, self.args = norm, None
        if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine:
            self.args = (norm.weight, norm.bias, norm.eps)
        elif isinstance(norm, XLayerNorm):
            self.args = (norm.gamma + float(norm.unit_offset), None, norm.ln.eps)

    def __call__(self, x: Tensor) -> Tensor:
        if self.args is None:
            return self.module(x)
        weight, bias, eps = self.args
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


class _Block:
    """One layer of the stack, its weights gathered for a step: pre-norm, and for attention
    the fused q/k/v (self) or q (cross) projection, the output projection and the gate."""

    def __init__(self, layer_type: str, norms: nn.ModuleList, branch: nn.Module, residual, where):
        if norms[1] is not None or norms[2] is not None:
            raise UnsupportedNetError(f"{where}: post-branch norms are not supported")
        if type(residual) is not Residual or residual.residual_scale is not None:
            raise UnsupportedNetError(f"{where}: only the plain residual is supported")
        if residual.scale_residual_constant != 1:
            raise UnsupportedNetError(f"{where}: a scaled residual is not supported")
        self.kind = layer_type
        self.norm = _Norm(norms[0])
        self.branch = unwrap_branch(branch)
        if layer_type not in ("a", "c"):
            return
        gated = getattr(self.branch, "cross_attn", None)
        attention = _plain_attention(gated if gated is not None else self.branch, where)
        self.attention = attention
        self.heads, self.scale = attention.heads, attention.scale
        self.head_dim = attention.to_q.out_features // attention.heads
        projections = (attention.to_q, attention.to_k, attention.to_v)
        if any(projection.bias is not None for projection in projections):
            raise UnsupportedNetError(f"{where}: q/k/v biases are not supported")
        if layer_type == "a":
            self.in_weight = torch.cat([projection.weight for projection in projections])
        else:
            self.in_weight = attention.to_q.weight
        if not isinstance(attention.to_out, nn.Linear | nn.Identity):
            raise UnsupportedNetError(f"{where}: {type(attention.to_out).__name__} output")
        self.to_out = attention.to_out
        self.gate = self.branch.cross_attn_gate.tanh() if gated is not None else None

    def heads_of(self, x: Tensor) -> Tensor:
        """[B, T, H*D] -> [B, H, T, D]."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def out(self, attended: Tensor) -> Tensor:
        """[B, H, T, D] -> the branch's output [B, T, dim], gate applied."""
        out = self.to_out(attended.transpose(1, 2).flatten(2))
        return out * self.gate if self.gate is not None else out


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
        self.absolute_positions = None
        if isinstance(net.pos_emb, AbsolutePositionalEmbedding):
            self.absolute_positions = net.pos_emb
        elif not isinstance(net.pos_emb, always) or net.pos_emb.val != 0:
            raise UnsupportedNetError(f"{type(net.pos_emb).__name__} positions are not supported")
        # post-embedding norm, dropout, projection: the ones that do something in eval
        self.after_embedding = [
            module
            for module in (net.post_emb_norm, net.emb_dropout, net.project_emb)
            if not isinstance(module, nn.Identity | nn.Dropout)
        ]
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
        self.final_norm = _Norm(layers.final_norm)
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
        self.pads = 0  # the most left pads of a row
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
                block.heads_of(block.attention.to_k(context)),
                block.heads_of(block.attention.to_v(context)) * keep,
                mask,
            )
            for block in self.blocks
            if block.kind == "c"
        ]

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        x = self.net.token_emb(tokens)
        if self.absolute_positions is not None:
            x = x + self.absolute_positions(x, pos=positions, seq_start_pos=self.pad_counts)
        for module in self.after_embedding:
            x = module(x)
        return x

    def _rotate(self, x: Tensor, start: int) -> Tensor:
        if self.rotary is None:
            return x
        return apply_rotary_pos_emb(x, self.rotary_freqs[:, start : start + x.shape[2]])

    def _forward(self, tokens: Tensor, start: int, mask: Tensor | None) -> Tensor:
        """Logits [B, V] after `tokens` [B, T] at positions start..start+T-1 (within one pass of
        the ring), self-attending under `mask` [B,1,T,K] (None: causal); writes their
        keys/values into the buffers."""
        length = tokens.shape[1]
        slot = start % self.slots
        written = slice(slot, slot + length)
        filled = min(start + length, self.slots)
        causal = mask is None and length > 1
        x = self._embed(tokens, self.positions[start : start + length])
        cross = iter(self.cross_kv)
        cache = iter(self.self_kv)
        for block in self.blocks:
            inputs = block.norm(x)
            if block.kind == "a":
                keys, values = next(cache)
                q, k, v = F.linear(inputs, block.in_weight).chunk(3, dim=-1)
                q = self._rotate(block.heads_of(q), start)
                keys[:, :, written] = self._rotate(block.heads_of(k), start)
                values[:, :, written] = block.heads_of(v)
                attended = F.scaled_dot_product_attention(
                    q,
                    keys[:, :, :filled],
                    values[:, :, :filled],
                    mask,
                    is_causal=causal,
                    scale=block.scale,
                )
                x = x + block.out(attended)
            elif block.kind == "c":
                keys, values, context_mask = next(cross)
                q = block.heads_of(F.linear(inputs, block.in_weight))
                attended = F.scaled_dot_product_attention(
                    q, keys, values, context_mask, scale=block.scale
                )
                x = x + block.out(attended)
            else:
                x = x + block.branch(inputs)
        return self.net.to_logits(self.final_norm(x[:, -1]))

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
        self.pads = int(pad_counts.max())
        positions = self.positions[:length]
        self.key_is_real[:, :length] = positions[None, :] >= pad_counts[:, None]
        mask = None
        if self.pads:  # causal, pads masked as keys, each pad its own key (so its row is finite)
            causal = positions[:, None] >= positions[None, :]
            own = torch.eye(length, dtype=torch.bool, device=tokens.device)
            mask = ((causal[None] & self.key_is_real[:, None, :length]) | own[None])[:, None]
        logits = self._forward(tokens, 0, mask)
        self.position = length
        return logits

    @torch.no_grad()
    def step(self, token: Tensor) -> Tensor:
        """Append one token per row ([B] or [B, 1]): logits [B, V] for the next."""
        if self.position >= self.length:
            raise RuntimeError(f"the buffers hold {self.length} positions; all are used")
        self.key_is_real[:, self.position % self.slots] = True
        # the one query is the latest position: only pads (until the ring overwrites them) hide
        mask = None
        if self.position - self.slots + 1 < self.pads:
            filled = min(self.position + 1, self.slots)
            mask = self.key_is_real[:, None, None, :filled]
        logits = self._forward(token.view(self.batch, 1), self.position, mask)
        self.position += 1
        return logits
