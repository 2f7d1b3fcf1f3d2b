"""Per-token cost of Staria's cached decoding against a minimal decoder of the same shape with a
preallocated KV cache and SDPA attention (the anchor, written here and nowhere else), in the
same run: at 64, 1,024 and 4,032 cached tokens, batch 1 and 8, for the tiny decoder and a
512-wide, 8-layer one, in CPU seconds per generated token (one torch thread). The goal is
Staria within 1.3x of the anchor, and its cost growing at most 1.3x from 64 to 4,032.

The two alternate step by step so both see the machine in the same state: Staria generates
from a prompt of the cached length, and after each of its steps (a forward hook on the output
head) the anchor takes one step at the same cache position. Staria's figure is the median
gap between its steps with the anchor's step left out (sampling and the next forward); the
anchor's is the median of its steps (forward and sampling).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn
from torch.nn import functional as F

from staria.models.autoregressive import DecodingSpec, LogitsFilter
from staria.models.decoder import CrossAttendingDecoder

VOCAB = 17742
CONTEXT = 4 * 65  # four snippet rows of 65 tokens: what the decoder cross-attends to


class MinimalDecoder(nn.Module):
    """Pre-norm decoder with self-attention over a preallocated cache, gated cross-attention
    over precomputed context keys/values, and a GELU feed-forward with a bottleneck adapter on
    its output (Staria's block, `adapter_dim` 96 as its default); nothing else."""

    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, max_len: int, adapter_dim: int = 96
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.embed, self.position = nn.Embedding(VOCAB, dim), nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "qkv": nn.Linear(dim, 3 * inner, bias=False),
                    "out": nn.Linear(inner, dim, bias=False),
                    "norm2": nn.LayerNorm(dim),
                    "cross_q": nn.Linear(dim, inner, bias=False),
                    "cross_out": nn.Linear(inner, dim, bias=False),
                    "norm3": nn.LayerNorm(dim),
                    "ff": nn.Sequential(
                        nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
                    ),
                    "adapter": nn.Sequential(
                        nn.Linear(dim, adapter_dim), nn.GELU(), nn.Linear(adapter_dim, dim)
                    ),
                }
            )
            for _ in range(depth)
        )
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, VOCAB, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.heads, self.dim_head).transpose(1, 2)

    @torch.no_grad()
    def step(self, token, position: int, cache_k, cache_v, context_k, context_v):
        """Logits [B, V] of one new token at `position`; its keys/values go into the cache."""
        x = self.embed(token) + self.position.weight[position]
        gate = torch.tensor(0.5).tanh()
        for index, layer in enumerate(self.layers):
            q, k, v = layer["qkv"](layer["norm1"](x)).chunk(3, dim=-1)
            cache_k[index, :, :, position] = self.split(k)[:, :, 0]
            cache_v[index, :, :, position] = self.split(v)[:, :, 0]
            keys, values = (
                cache_k[index, :, :, : position + 1],
                cache_v[index, :, :, : position + 1],
            )
            attended = F.scaled_dot_product_attention(self.split(q), keys, values)
            x = x + layer["out"](attended.transpose(1, 2).reshape(x.shape[0], 1, -1))
            q = self.split(layer["cross_q"](layer["norm2"](x)))
            attended = F.scaled_dot_product_attention(q, context_k[index], context_v[index])
            x = x + gate * layer["cross_out"](attended.transpose(1, 2).reshape(x.shape[0], 1, -1))
            out = layer["ff"](layer["norm3"](x))
            x = x + out + layer["adapter"](out)
        return self.head(self.norm(x))[:, -1]


class AnchorSteps:
    """The minimal decoder of `shape` decoding from `cached` random cached tokens, one timed
    step (forward and sampling) per call."""

    def __init__(self, shape: dict, batch: int, cached: int) -> None:
        self.model = MinimalDecoder(
            shape["dim"], shape["depth"], shape["heads"], shape["dim_head"], 4096
        )
        size = (shape["depth"], batch, shape["heads"], 4096, shape["dim_head"])
        self.cache = torch.randn(size), torch.randn(size)
        context = (shape["depth"], batch, shape["heads"], CONTEXT, shape["dim_head"])
        self.context = torch.randn(context), torch.randn(context)
        self.token = torch.randint(6, 17000, (batch, 1))
        self.position = cached
        self.seconds: list[float] = []

    def __call__(self) -> None:
        started = time.process_time()
        logits = self.model.step(self.token, self.position, *self.cache, *self.context)
        self.token = torch.multinomial(F.softmax(logits, dim=-1), 1)
        self.seconds.append(time.process_time() - started)
        self.position += 1


def interleaved_seconds(shape: dict, batch: int, cached: int, steps: int) -> tuple[float, float]:
    """Median CPU seconds per token of Staria's `generate` and of the anchor, their steps
    alternating: after each Staria step (its output head's forward hook) one anchor step runs,
    and is left out of Staria's gap. Both see the machine in the same state."""
    decoder = CrossAttendingDecoder(VOCAB, max_seq_len=4096, context_dim=shape["dim"], **shape)
    decoder.eval()
    anchor = AnchorSteps(shape, batch, cached)
    gaps: list[float] = []
    resumed: list[float] = []

    def after_step(*_) -> None:
        if resumed:
            gaps.append(time.process_time() - resumed[-1])
        anchor()
        resumed.append(time.process_time())

    decoder.head.register_forward_hook(after_step)
    prompt = torch.randint(6, 17000, (batch, cached))
    context = torch.randn(batch, CONTEXT, shape["dim"])
    mask = torch.ones(batch, CONTEXT, dtype=torch.bool)
    decoding = DecodingSpec(logits_filter=LogitsFilter(temperature=1.0), eos_id=-1)
    decoder.generate(prompt, steps + 1, context, mask, decoding)
    return statistics.median(gaps), statistics.median(anchor.seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shapes = {
        "tiny (64 wide, 2 layers)": {"dim": 64, "depth": 2, "heads": 2, "dim_head": 32},
        "512 wide, 8 layers": {"dim": 512, "depth": 8, "heads": 8, "dim_head": 64},
    }
    print("CPU ms per generated token; ratio Staria / minimal preallocated-cache decoder")
    for name, shape in shapes.items():
        for batch in (1, 8):
            figures = {}
            for cached in (64, 1024, 4032):
                ours, anchor = interleaved_seconds(shape, batch, cached, args.steps)
                figures[cached] = (ours, anchor)
                print(
                    f"  {name:26s} batch {batch}  {cached:5d} cached: Staria "
                    f"{ours * 1e3:7.2f} ms, anchor {anchor * 1e3:7.2f} ms ({ours / anchor:4.2f}x)"
                )
            growth = figures[4032][0] / figures[64][0]
            anchor_growth = figures[4032][1] / figures[64][1]
            print(f"    growth 64 -> 4,032: Staria {growth:4.2f}x, anchor {anchor_growth:4.2f}x")


if __name__ == "__main__":
    main()
