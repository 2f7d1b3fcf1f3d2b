"""Per-token cost of Staria's cached decoding against a minimal decoder of the same shape with a
preallocated KV cache and SDPA attention (the anchor, written here and nowhere else), in the
same run: at 64, 1,024 and 4,032 cached tokens, batch 1 and 8, for the tiny decoder and a
512-wide, 8-layer one, in CPU seconds per generated token (one torch thread). The goal is
Staria within 1.3x of the anchor, and its cost growing at most 1.3x from 64 to 4,032.

Staria's figure is the median gap between successive calls of the output head (once per
decoding step: sampling, the step's forward), generating from a prompt of the cached length;
the anchor's is the median of single steps (forward and sampling) at that cache position.
"""

import argparse
import itertools
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
    """Pre-norm decoder with self-attention over a preallocated cache, cross-attention over
    precomputed context keys/values, and a GELU feed-forward; nothing else."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, max_len: int):
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
            x = x + layer["cross_out"](attended.transpose(1, 2).reshape(x.shape[0], 1, -1))
            x = x + layer["ff"](layer["norm3"](x))
        return self.head(self.norm(x))[:, -1]


def anchor_seconds(shape: dict, batch: int, cached: int, steps: int) -> float:
    model = MinimalDecoder(shape["dim"], shape["depth"], shape["heads"], shape["dim_head"], 4096)
    size = (shape["depth"], batch, shape["heads"], 4096, shape["dim_head"])
    cache_k, cache_v = torch.randn(size), torch.randn(size)
    context = (shape["depth"], batch, shape["heads"], CONTEXT, shape["dim_head"])
    context_k, context_v = torch.randn(context), torch.randn(context)
    token = torch.randint(6, 17000, (batch, 1))
    times = []
    for step in range(steps):
        started = time.process_time()
        logits = model.step(token, cached + step, cache_k, cache_v, context_k, context_v)
        token = torch.multinomial(F.softmax(logits, dim=-1), 1)
        times.append(time.process_time() - started)
    return statistics.median(times[1:])


def staria_seconds(shape: dict, batch: int, cached: int, steps: int) -> float:
    decoder = CrossAttendingDecoder(VOCAB, max_seq_len=4096, context_dim=shape["dim"], **shape)
    decoder.eval()
    stamps: list[float] = []
    # the output head runs once per decoding step: stamp each
    decoder.head.register_forward_hook(lambda *_: stamps.append(time.process_time()))
    prompt = torch.randint(6, 17000, (batch, cached))
    context = torch.randn(batch, CONTEXT, shape["dim"])
    mask = torch.ones(batch, CONTEXT, dtype=torch.bool)
    decoding = DecodingSpec(logits_filter=LogitsFilter(temperature=1.0), eos_id=-1)
    decoder.generate(prompt, steps + 1, context, mask, decoding)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
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
                ours = staria_seconds(shape, batch, cached, args.steps)
                anchor = anchor_seconds(shape, batch, cached, args.steps)
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
