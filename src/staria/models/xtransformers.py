"""Every place Staria builds, changes or reads x-transformers' internals, in one module.

Checked against x-transformers 2.31.10 with torch 2.13 (`pyproject.toml` pins `<2.32`); a newer
x-transformers must pass `tests/models` (layouts, Aria loading, static-cache equality) before the
bound moves. No other module imports from inside x-transformers. What is adapted here:
- `build_decoder_net`, `build_encoder_net`: the `TransformerWrapper`s of every Staria network;
- Aria's block (`_to_aria_layout`): rotary base, LayerNorm with bias and bias-free GLU swapped
  into a built `Decoder`, as x-transformers cannot configure them;
- zero-gated cross-attention and adapters (`GatedCrossAttention`, `AdaptedFeedForward`) put in
  place of the branches of a built stack;
- activation checkpointing (`checkpoint_layers`), which x-transformers lacks;
- reading the structure back: `decoder_blocks`, `block_parts`, `aria_trunk`, `glu_projections`,
  `has_rotary`, `logits_head`, `norm_modules`, `token_row_weights`, `unwrap_branch` (used by
  stages, Aria loading, generation and `static_cache`);
- the internals `static_cache` mirrors for decoding (its attention, residual, norms and rotary
  embedding; tested against x-transformers' own forward output for output) and the logits
  filters `autoregressive` wraps, re-exported below;
- `decoder_only_state_for`: a decoder-only LM's weights renamed for the same trunk with a
  bridge (x-transformers numbers the layers of all blocks in one list).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from x_transformers import Decoder, Encoder, TransformerWrapper
from x_transformers.autoregressive_wrapper import min_p as min_p_filter
from x_transformers.autoregressive_wrapper import top_k as top_k_filter
from x_transformers.autoregressive_wrapper import top_p as top_p_filter
from x_transformers.x_transformers import (
    GLU,
    AbsolutePositionalEmbedding,
    Attention,
    AttentionLayers,
    LayerNorm,
    Residual,
    RMSNorm,
    RotaryEmbedding,
    always,
    apply_rotary_pos_emb,
)

from staria.tokenizer import VOCAB_SIZE

# What `static_cache` (the decoding mirror of x-transformers' forward) and `autoregressive`
# (the logits filters) use of x-transformers, imported here with everything else.
__all__ = [
    "AbsolutePositionalEmbedding",
    "Attention",
    "LayerNorm",
    "Residual",
    "always",
    "apply_rotary_pos_emb",
    "min_p_filter",
    "top_k_filter",
    "top_p_filter",
]

ARIA_ROTARY_BASE = 500_000


@dataclass(eq=False, repr=False)
class TrunkShape:
    """The size of an x-transformers trunk, the settings every Staria network starts from
    (each network's class, a dataclass, overrides the defaults it needs): `num_tokens` ids
    (the tokenizer's vocabulary), `depth` layers of `heads` x `dim_head` attention on a `dim`
    residual stream, positions up to `max_seq_len`; `attn_flash` uses torch's SDPA,
    `activation_checkpointing` recomputes each layer in the backward pass."""

    num_tokens: int = VOCAB_SIZE
    dim: int = 1536
    depth: int = 16
    heads: int = 24
    dim_head: int = 64
    max_seq_len: int = 4096
    attn_flash: bool = False
    activation_checkpointing: bool = False


class GatedCrossAttention(nn.Module):
    """x-transformers cross-attention whose output is scaled by tanh(gate), gate initialised to
    `gate_init` (0: the branch adds nothing until training opens it).

    Parameter names contain `cross_attn` so stages and optimizers can find them.
    """

    def __init__(self, cross_attn: nn.Module, gate_init: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = cross_attn
        self.cross_attn_gate = nn.Parameter(torch.full((1,), float(gate_init)))

    def forward(self, x: Tensor, **kwargs) -> tuple[Tensor, object]:
        out, intermediates = self.cross_attn(x, **kwargs)
        return out * self.cross_attn_gate.tanh(), intermediates


class Adapter(nn.Module):
    """Bottleneck adapter (down, GELU, up); its up projection starts at zero, so it adds nothing."""

    def __init__(self, dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck_dim)
        self.up = nn.Linear(bottleneck_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(nn.functional.gelu(self.down(x)))


class AdaptedFeedForward(nn.Module):
    """A feed-forward layer followed by a residual adapter on its output (Houlsby placement)."""

    def __init__(self, feed_forward: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.feed_forward = feed_forward
        self.adapter = adapter

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        out = self.feed_forward(x, **kwargs)
        return out + self.adapter(out)


@dataclass(frozen=True)
class Bridge:
    """What joins a decoder to the snippet encoder: gated cross-attention to a context
    `context_dim` wide in every block, its gate starting at `gate_init` (tanh(gate) scales the
    branch), and, with `adapter_dim > 0`, an adapter after each feed-forward."""

    context_dim: int
    adapter_dim: int = 0
    gate_init: float = 0.0


def build_decoder_net(
    shape: TrunkShape, aria_layout: bool = False, bridge: Bridge | None = None
) -> TransformerWrapper:
    """The x-transformers causal LM that both the baseline and the Staria decoder are made of.

    Default layout = x-transformers defaults: learned absolute positions over `max_seq_len`, GELU
    feed-forward x4 with biases, bias-free LayerNorm, untied output head. `aria_layout=True` gives
    Aria's block instead: rotary positions (base 500,000, full head width, interleaved pairs),
    SwiGLU feed-forward x4 without biases, nn.LayerNorm with bias (as Aria's norm1/norm2).
    With a `bridge`, every block gets its gated cross-attention (and adapter).
    """
    dim, dim_head = shape.dim, shape.dim_head
    layer_kwargs: dict = {"attn_dim_head": dim_head, "attn_flash": shape.attn_flash}
    if aria_layout:
        layer_kwargs |= {
            "rotary_pos_emb": True,
            "rotary_emb_dim": dim_head,
            "ff_glu": True,
            "ff_swish": True,
            "ff_no_bias": True,
        }
    if bridge is not None:
        layer_kwargs |= {"cross_attend": True, "cross_attn_dim_context": bridge.context_dim}
    layers = Decoder(dim=dim, depth=shape.depth, heads=shape.heads, **layer_kwargs)
    if aria_layout:
        _to_aria_layout(layers, dim, dim_head)
    for layer_type, layer in zip(layers.layer_types, layers.layers, strict=True):
        if layer_type == "c":
            layer[1] = GatedCrossAttention(layer[1], bridge.gate_init)
        elif layer_type == "f" and bridge is not None and bridge.adapter_dim > 0:
            layer[1] = AdaptedFeedForward(layer[1], Adapter(dim, bridge.adapter_dim))
    return _wrapped(layers, shape)


def build_encoder_net(shape: TrunkShape) -> TransformerWrapper:
    """A bidirectional x-transformers encoder returning token states [N,L,dim] (no head),
    learned absolute positions over `max_seq_len`."""
    layers = Encoder(
        dim=shape.dim,
        depth=shape.depth,
        heads=shape.heads,
        attn_dim_head=shape.dim_head,
        attn_flash=shape.attn_flash,
    )
    return _wrapped(layers, shape, return_only_embed=True)


def _wrapped(layers: AttentionLayers, shape: TrunkShape, **options) -> TransformerWrapper:
    """The token embedding, positions and (unless `return_only_embed`) head around `layers`."""
    if shape.activation_checkpointing:
        checkpoint_layers(layers)
    return TransformerWrapper(
        num_tokens=shape.num_tokens, max_seq_len=shape.max_seq_len, attn_layers=layers, **options
    )


def _to_aria_layout(layers: Decoder, dim: int, dim_head: int) -> None:
    """Swap the parts x-transformers cannot configure: rotary base, LayerNorm bias, GLU bias."""
    layers.rotary_pos_emb = RotaryEmbedding(dim_head, base=ARIA_ROTARY_BASE)
    for norms, _, _ in layers.layers:
        norms[0] = nn.LayerNorm(dim)
    layers.final_norm = nn.LayerNorm(dim)
    for module in layers.modules():
        if isinstance(module, GLU):
            module.proj.register_parameter("bias", None)


def checkpoint_layers(layers: AttentionLayers) -> None:
    """Recompute each attention / feed-forward layer in the backward pass instead of storing it.

    torch's wrapper strips its own prefix from state dicts, so checkpoints load with or without
    it. Early stopping of the recomputation is off: it stops by raising an exception, which
    einx (inside x-transformers) re-raises as its own error.
    """
    for layer in layers.layers:
        layer[1] = checkpoint_wrapper(layer[1], early_stop=False)


def unwrap_branch(module: nn.Module) -> nn.Module:
    """The module inside torch's activation-checkpoint wrapper, or the module itself."""
    return getattr(module, "_checkpoint_wrapped_module", module)


def decoder_blocks(net: TransformerWrapper) -> list[list[nn.Module]]:
    """The decoder's transformer blocks bottom to top, each the list of its layers' modules
    (norms, attention / cross-attention / feed-forward, residual)."""
    layers = net.attn_layers
    per_block = layers.len_default_block
    return [
        list(layers.layers[start : start + per_block])
        for start in range(0, len(layers.layers), per_block)
    ]


def block_parts(net: TransformerWrapper) -> list[tuple[nn.Module, Attention, nn.Module, nn.Module]]:
    """Per decoder block bottom to top: (attention's pre-norm, self-attention, feed-forward's
    pre-norm, feed-forward), each unwrapped from checkpointing and adapters."""
    layers, parts = net.attn_layers, []
    per_block = layers.len_default_block
    for index, block in enumerate(decoder_blocks(net)):
        types = layers.layer_types[index * per_block : (index + 1) * per_block]
        attn_norms, attn, _ = block[types.index("a")]
        ff_norms, ff, _ = block[types.index("f")]
        ff = unwrap_branch(ff)
        parts.append(
            (attn_norms[0], unwrap_branch(attn), ff_norms[0], getattr(ff, "feed_forward", ff))
        )
    return parts


def aria_trunk(net: TransformerWrapper) -> tuple[nn.LayerNorm, int, int]:
    """(final LayerNorm, heads, dim per head) of a net in Aria layout; `ValueError` otherwise."""
    layers = net.attn_layers
    if not isinstance(layers.final_norm, nn.LayerNorm) or not has_rotary(net):
        raise ValueError("model is not in Aria layout: build it with aria_layout=True")
    return layers.final_norm, layers.attn_heads, layers.attn_dim_head


def glu_projections(feed_forward: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """A GLU feed-forward's [up; gate] input projection and its output projection."""
    return feed_forward.ff[0].proj, feed_forward.ff[-1]


def has_rotary(net: TransformerWrapper) -> bool:
    """Whether `net` encodes positions by rotary embedding (else learned absolute ones)."""
    return net.attn_layers.rotary_pos_emb is not None


def logits_head(net: TransformerWrapper) -> nn.Linear:
    """The output projection, hidden [.., D] -> logits [.., V] (no bias)."""
    return net.to_logits


def norm_modules(module: nn.Module) -> list[nn.Module]:
    """Every normalisation layer inside `module` (x-transformers' and torch's)."""
    return [m for m in module.modules() if isinstance(m, LayerNorm | RMSNorm | nn.LayerNorm)]


def token_row_weights(net: TransformerWrapper) -> tuple[nn.Parameter, nn.Parameter]:
    """The matrices with a row per token id: input embedding [V,D] and output head [V,D]."""
    return net.token_emb.emb.weight, net.to_logits.weight


def decoder_only_state_for(state: dict[str, Tensor], net: TransformerWrapper) -> dict[str, Tensor]:
    """A decoder-only LM's state dict (`build_decoder_net` without a bridge, keys of its
    `TransformerWrapper`) renamed for `net`, a decoder of the same trunk with a `Bridge`:
    block b's self-attention and feed-forward layers move to their places among b's layers
    (x-transformers numbers the layers of all blocks in one list, so a cross-attention layer
    shifts every later index), a feed-forward behind an adapter gets the adapter's prefix.
    Keys outside the layer stack (embeddings, positions, final norm, head) stay as they are;
    the bridge's own weights are not in `state` and keep their initial values."""
    layers = net.attn_layers
    per_block = layers.len_default_block
    target_types = layers.layer_types
    source_types = [kind for kind in target_types[:per_block] if kind != "c"]
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[:2] != ["attn_layers", "layers"]:
            renamed[key] = value
            continue
        index = int(parts[2])
        block, kind = divmod(index, len(source_types))
        layer_type = source_types[kind]
        target = block * per_block + target_types[:per_block].index(layer_type)
        rest = parts[3:]
        adapted = target < len(layers.layers) and isinstance(
            unwrap_branch(layers.layers[target][1]), AdaptedFeedForward
        )  # a layer past the end stays an unexpected key for the caller to name
        if rest[0] == "1" and adapted:
            rest = ["1", "feed_forward", *rest[1:]]
        renamed[".".join(["attn_layers", "layers", str(target), *rest])] = value
    return renamed


def bridge_keys(net: TransformerWrapper) -> set[str]:
    """The state-dict keys of `net`'s bridge: its cross-attention layers (their norms too)
    and adapters, which a decoder-only LM does not have."""
    layers = net.attn_layers
    cross = {
        f"attn_layers.layers.{index}."
        for index, kind in enumerate(layers.layer_types)
        if kind == "c"
    }
    names = [name for name, _ in (*net.named_parameters(), *net.named_buffers())]
    return {
        name
        for name in names  # as `load_state_dict` reports them: inside checkpoint wrappers too
        if any(name.startswith(prefix) for prefix in cross) or ".adapter." in name
    }


class CompactEmbedding(nn.Module):
    """A token embedding with rows only for `full_ids` (sorted vocabulary ids, [K]): a full id
    looks up its row (`rows[id]`, [V]); an id outside `full_ids` gets the row of `unknown_id`."""

    def __init__(self, weight: Tensor, full_ids: Tensor, vocab_size: int, unknown_id: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.register_buffer("full_ids", full_ids.clone())
        rows = torch.full((vocab_size,), int(torch.searchsorted(full_ids, unknown_id)))
        rows[full_ids] = torch.arange(len(full_ids))
        self.register_buffer("rows", rows)

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(self.rows[ids.long()], self.weight)


class CompactHead(nn.Module):
    """An output projection with rows only for `full_ids` [K]: logits [.., V] as the full head
    gives them, -inf for every id outside `full_ids` (which the model can never produce)."""

    def __init__(self, weight: Tensor, full_ids: Tensor, vocab_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.register_buffer("full_ids", full_ids.clone())
        self.vocab_size = vocab_size

    def forward(self, hidden: Tensor) -> Tensor:
        compact = nn.functional.linear(hidden, self.weight)
        logits = compact.new_full((*compact.shape[:-1], self.vocab_size), float("-inf"))
        return logits.index_copy(-1, self.full_ids, compact)


def use_compact_vocabulary(model: nn.Module, full_ids: Tensor, unknown_id: int) -> None:
    """Give every x-transformers net in `model` embedding and head rows for `full_ids` only
    (sorted ids, `unknown_id` among them), their values taken from the full rows: inputs and
    logits keep the full vocabulary's ids, so data, losses, sampling and MIDI are unchanged
    and the model computes what the full one computes on those ids. A model built with the
    full vocabulary and a compact checkpoint's `full_ids` loads that checkpoint."""
    full_ids = torch.as_tensor(full_ids, dtype=torch.long).sort().values
    if unknown_id not in full_ids.tolist():
        raise ValueError(f"full_ids must hold the unknown id {unknown_id}")
    for net in [m for m in model.modules() if isinstance(m, TransformerWrapper)]:
        embedding = net.token_emb.emb
        if isinstance(embedding, CompactEmbedding):
            raise ValueError("the model has a compact vocabulary already")
        vocab_size = embedding.num_embeddings
        net.token_emb.emb = CompactEmbedding(
            embedding.weight[full_ids], full_ids, vocab_size, unknown_id
        )
        if isinstance(net.to_logits, nn.Linear):
            net.to_logits = CompactHead(net.to_logits.weight[full_ids], full_ids, vocab_size)


def vocabulary_parameter_count(model: nn.Module) -> int:
    """Parameters of the token embedding and output head rows (full or compact) of every
    x-transformers net in `model`; every other parameter is the trunk's (positions included).
    A head tied to its embedding counts once."""
    seen: set[int] = set()
    total = 0
    for net in [m for m in model.modules() if isinstance(m, TransformerWrapper)]:
        parts = [net.token_emb]
        if isinstance(net.to_logits, nn.Module):
            parts.append(net.to_logits)
        for parameter in (p for part in parts for p in part.parameters()):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
    return total


def compact_ids_in(state: dict[str, Tensor]) -> Tensor | None:
    """The `full_ids` a compact-vocabulary state dict was made with; None for a full one."""
    for key, value in state.items():
        if key.endswith("token_emb.emb.full_ids"):
            return value
    return None


def token_rows(net: TransformerWrapper, ids: tuple[int, ...]) -> tuple[int, ...]:
    """The embedding (and head) rows of vocabulary `ids` in `net`: the ids themselves for the
    full vocabulary, their rows for a compact one."""
    embedding = net.token_emb.emb
    if isinstance(embedding, CompactEmbedding):
        return tuple(embedding.rows[list(ids)].tolist())
    return ids
