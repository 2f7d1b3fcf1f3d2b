"""GPU check (`make gpu-check`): what the full-size models do on one GPU, in one script.

Prints, each against its anchor measured in the same run:
- the GPU's bf16 matmul rate (an 8192^3 matmul);
- a bf16 training step (AdamW, autocast, the training tasks' loss) of the full-size
  decoder-only baseline (513,953,280 parameters) and of full-size Staria at 4,096 tokens:
  tokens/s, model FLOPs utilisation and peak memory, with flash attention (SDPA) off and on,
  and torch.compile off and on. The model FLOPs are those of one step (forward and backward)
  as torch's `FlopCounterMode` counts them; the peak they are divided by is the GPU's
  data-sheet bf16 peak where `SPEC_PEAKS` knows it, else the measured matmul rate;
- cached generation tokens/s of the baseline at batch 1 and 16, from a 64-token prompt to
  4,096 tokens.

`--tiny --device cpu` runs the same code on the tiny nets (the test suite does), so the script
is known to run before a GPU is lent. Every section has its own time budget; a section that
fails prints its error and the rest still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import traceback
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import hydra
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from staria.models import DecoderOnlyBaseline, StariaModel
from staria.models.autoregressive import DecodingSpec, LogitsFilter
from staria.paths import REPO_ROOT
from staria.training.config import compose_net
from staria.training.tasks.base import chunked_sequence_loss

LOSS_CHUNK_TOKENS = OmegaConf.load(REPO_ROOT / "conf/model/shared/lm_loss.yaml").loss_chunk_tokens

# Dense bf16 tensor-core peaks (vendor data sheets, FLOP/s) for MFU; others use the matmul rate.
SPEC_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def build(name: str, flash: bool, device: torch.device) -> torch.nn.Module:
    """A network of `conf/model/net/<name>.yaml` with flash attention (SDPA) on or off."""
    config = compose_net(name)
    for node in (config, config.get("encoder"), config.get("decoder")):
        if node is not None and "attn_flash" in node:
            node.attn_flash = flash
    return hydra.utils.instantiate(config).to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, size: int) -> float:
    """Achieved FLOP/s of a bf16 (CPU: fp32) `size`^3 matmul, best of 5."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one `step()` (forward and backward) as torch's `FlopCounterMode` counts them:
    every matmul and attention call, the encoder's and the output head's included."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def batch_for(net: torch.nn.Module, batch: int, length: int, device: torch.device) -> tuple:
    tokens = torch.randint(6, 17000, (batch, length), device=device)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    if isinstance(net, StariaModel):
        snippet_len = net.encoder.net.max_seq_len
        snippets = torch.randint(6, 17000, (batch, 4, snippet_len), device=device)
        return (snippets, torch.ones_like(snippets, dtype=torch.bool), tokens, mask)
    return (tokens, mask)


def training_step_rate(
    name: str,
    batch: int,
    length: int,
    steps: int,
    device: torch.device,
    flash: bool,
    compile_: bool,
    peak_rate: float,
) -> str:
    model = build(name, flash, device)
    net = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    inputs = batch_for(model, batch, length, device)
    targets = inputs[-2]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    loss_mask = torch.ones_like(targets, dtype=torch.bool)

    def loss_of(module: torch.nn.Module) -> torch.Tensor:
        """The training tasks' next-token loss (`loss_chunk_tokens` of `lm_loss.yaml`)."""
        with autocast:
            hidden = module(*inputs, return_embeddings=True)
            return chunked_sequence_loss(
                hidden, model.head.weight, targets, loss_mask, LOSS_CHUNK_TOKENS
            ).loss

    def step() -> None:
        loss_of(net).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops_per_step = step_flops(lambda: loss_of(model).backward())  # uncompiled: same math
    optimizer.zero_grad(set_to_none=True)
    step()  # warm-up: allocation, compilation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    tokens_per_s = batch * length / seconds
    flops = flops_per_step / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return (
        f"{tokens_per_s:10.0f} tokens/s  {flops / 1e12:7.1f} TFLOP/s  "
        f"MFU {flops / peak_rate:6.1%}  peak memory {peak:5.1f} GiB"
    )


def generation_rate(name: str, batch: int, total: int, device: torch.device) -> str:
    net = build(name, flash=True, device=device).eval()
    assert isinstance(net, DecoderOnlyBaseline)
    prompt = torch.randint(6, 17000, (batch, 64), device=device)
    decoding = DecodingSpec(logits_filter=LogitsFilter(temperature=1.0), eos_id=-1)
    new_tokens = total - prompt.shape[1]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        net.generate(prompt, 8, decoding)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        net.generate(prompt, new_tokens, decoding)
        synchronize(device)
    seconds = time.perf_counter() - started
    return f"{batch * new_tokens / seconds:10.0f} tokens/s  ({new_tokens} steps, {seconds:.1f} s)"


def section(title: str, run: Callable[[], str]) -> None:
    started = time.perf_counter()
    try:
        result = run()
    except Exception as error:  # report and go on: one broken section must not hide the rest
        result = f"FAILED: {type(error).__name__}: {error}"
        traceback.print_exc()
    print(f"  {title:48s} {result}   [{time.perf_counter() - started:.0f} s]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny nets (a CPU rehearsal)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = "tiny" if args.tiny else "full"
    batch, length = (2, 256) if args.tiny else (1, 4096)
    total = 512 if args.tiny else 4096
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"== gpu-check on {name}, torch {torch.__version__}, {size} nets")
    rate = matmul_rate(device, 1024 if args.tiny else 8192)
    spec = next((peak for key, peak in SPEC_PEAKS.items() if key in name), None)
    print(f"  {'matmul rate (measured)':48s} {rate / 1e12:7.1f} TFLOP/s")
    peak_rate, anchor = (spec, "data-sheet bf16 peak") if spec else (rate, "measured matmul rate")
    print(f"== bf16 training step, batch {batch} x {length} tokens; MFU against the {anchor}")
    compiles = (False,) if args.no_compile else (False, True)
    for model in ("baseline", "staria"):
        for flash in (False, True):
            for compile_ in compiles:
                title = f"{model}_{size} flash={flash} compile={compile_}"
                section(
                    title,
                    lambda m=model, f=flash, c=compile_: training_step_rate(
                        f"{m}_{size}", batch, length, args.steps, device, f, c, peak_rate
                    ),
                )
    print(f"== cached generation, baseline_{size}, 64-token prompt to {total} tokens")
    for generation_batch in (1, 16):
        section(
            f"batch {generation_batch}",
            lambda b=generation_batch: generation_rate(f"baseline_{size}", b, total, device),
        )


if __name__ == "__main__":
    main()
