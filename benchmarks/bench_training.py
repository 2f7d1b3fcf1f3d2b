"""Training tokens/s of `StariaTask` under a Lightning `Trainer` against a plain PyTorch loop.

Both run the same x-transformers network (`conf/model/net/<net>.yaml`, same seed), the same
AdamW + warmup/cosine schedule and gradient clipping (`conf/trainer/cpu.yaml`), over the same
batches from `MidiDataModule`, materialised once so data loading costs the same. Each run is a
fresh process with one torch thread (its peak RSS is its own); plain and Lightning alternate for
`--rounds` rounds and the medians are compared. Warmup steps are not timed. Prints tokens/s (the
decoder's real tokens), the platform's overhead (must stay under 5%) and peak memory; the final
losses of both variants are printed too, and equal losses show the two did the same work.
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from staria.paths import REPO_ROOT

OPTIMIZER = {"lr": 3.0e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}
GRADIENT_CLIP = 1.0
OVERHEAD_LIMIT = 0.05


@dataclass
class RunResult:
    """One timed run: throughput over the timed steps (per CPU and per wall second), final loss,
    memory in MiB."""

    variant: str
    tokens_per_cpu_s: float
    tokens_per_wall_s: float
    final_loss: float
    start_rss_mib: float
    peak_rss_mib: float


def materialise_batches(cache_dir: Path, steps: int, max_seq_len: int, batch_size: int) -> list:
    """The first `steps` training batches of `conf/data/synthetic.yaml`."""
    import hydra
    from omegaconf import OmegaConf

    datamodule = hydra.utils.instantiate(
        OmegaConf.load(REPO_ROOT / "conf/data/synthetic.yaml"),
        cache_dir=str(cache_dir),
        max_seq_len=max_seq_len,
        batch_size=batch_size,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = []
    while len(batches) < steps:
        batches.extend(datamodule.train_dataloader())
    return batches[:steps]


def build_net(net: str) -> torch.nn.Module:
    import hydra

    from staria.training.config import compose_net

    torch.manual_seed(0)
    return hydra.utils.instantiate(compose_net(net))


def scheduler_config(steps: int) -> dict:
    return {"warmup_steps": 10, "total_steps": steps, "min_lr_ratio": 0.1}


def rss_mib() -> float:
    """Current resident set size (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def loader(batches: list) -> torch.utils.data.DataLoader:
    """The pre-made batches as they are (no collation), the same loader for both variants."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


@dataclass
class Clock:
    """CPU seconds (all threads of this process) and wall seconds since `start`."""

    cpu: float = 0.0
    wall: float = 0.0

    def start(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def stop(self) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def batch_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A function, so the [B,T,V] logits are freed before the next step (as in the task)."""
    from staria.training.tasks.base import sequence_loss

    logits = net(batch["snippets"], batch["snippet_mask"], batch["tokens"], batch["token_mask"])
    return sequence_loss(logits, batch["tokens"], batch["loss_mask"]).loss


def plain_loop(net: torch.nn.Module, batches: list, warmup: int) -> tuple[Clock, float]:
    """What one would write by hand; returns (timed steps' clock, final loss)."""
    from staria.training.tasks.base import warmup_cosine

    optimizer = torch.optim.AdamW(
        net.parameters(),
        lr=OPTIMIZER["lr"],
        betas=tuple(OPTIMIZER["betas"]),
        weight_decay=OPTIMIZER["weight_decay"],
    )
    schedule = scheduler_config(len(batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, **schedule)
    )
    net.train()
    clock = Clock()
    for step, batch in enumerate(loader(batches)):
        if step == warmup:
            clock.start()
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(net, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), GRADIENT_CLIP)
        optimizer.step()
        scheduler.step()
    clock.stop()
    return clock, loss.item()


def lightning_loop(net: torch.nn.Module, batches: list, warmup: int) -> tuple[Clock, float]:
    """`StariaTask` fitted by a bare Trainer; timed from the start of step `warmup` to the end."""
    import lightning.pytorch as pl

    from staria.training.tasks import StariaTask

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.clock = Clock()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == len(batches) - 1:
                self.clock.stop()

    task = StariaTask(net, OPTIMIZER, scheduler_config(len(batches)))
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=GRADIENT_CLIP,
        callbacks=[clock],
    )
    trainer.fit(task, train_dataloaders=loader(batches))
    return clock.clock, float(trainer.callback_metrics["train/loss"])


def run_variant(variant: str, batches_path: str, net: str, warmup: int) -> RunResult:
    """One timed run in a fresh process (one thread, its own peak RSS)."""
    torch.set_num_threads(1)
    import lightning.pytorch  # noqa: F401  both variants carry the same imports

    batches = torch.load(batches_path, weights_only=False)
    model = build_net(net)
    start_rss = rss_mib()
    run = plain_loop if variant == "plain" else lightning_loop
    clock, final_loss = run(model, batches, warmup)
    tokens = sum(int(batch["token_mask"].sum()) for batch in batches[warmup:])
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return RunResult(
        variant, tokens / clock.cpu, tokens / clock.wall, final_loss, start_rss, peak_rss
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--net", default="staria_tiny", help="a file of conf/model/net")
    parser.add_argument("--steps", type=int, default=60, help="steps per run, warmup included")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    parser.add_argument("--rounds", type=int, default=3, help="plain/Lightning pairs")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=512)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    results: dict[str, list[RunResult]] = {"plain": [], "lightning": []}
    with tempfile.TemporaryDirectory() as temp:
        batches = materialise_batches(Path(temp), args.steps, args.max_seq_len, args.batch_size)
        batches_path = str(Path(temp) / "batches.pt")
        torch.save(batches, batches_path)
        tokens = sum(int(b["token_mask"].sum()) for b in batches)
        print(f"{len(batches)} batches of {args.batch_size}, {tokens} decoder tokens, {args.net}")
        context = get_context("spawn")
        for round_number in range(args.rounds):
            order = ("plain", "lightning") if round_number % 2 == 0 else ("lightning", "plain")
            for variant in order:
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    result = pool.submit(
                        run_variant, variant, batches_path, args.net, args.warmup
                    ).result()
                results[variant].append(result)
                print(
                    f"round {round_number} {variant:9s} "
                    f"{result.tokens_per_cpu_s:6.0f} tokens/CPU-s "
                    f"{result.tokens_per_wall_s:6.0f} tokens/wall-s  loss {result.final_loss:.4f}  "
                    f"peak RSS {result.peak_rss_mib:.0f} MiB (start {result.start_rss_mib:.0f} MiB)"
                )
    report(results)


def overhead(results: dict[str, list[RunResult]], measure: str) -> tuple[float, float, float]:
    """Median throughput of plain and Lightning runs, and Lightning's overhead (plain / it - 1)."""
    plain, lightning = (
        statistics.median(getattr(r, measure) for r in results[variant])
        for variant in ("plain", "lightning")
    )
    return plain, lightning, plain / lightning - 1


def report(results: dict[str, list[RunResult]]) -> None:
    """The verdict uses CPU time: both variants are single-threaded, so CPU time is the work
    done, and other jobs on the shared cores disturb it far less than wall time."""
    for measure, unit in (("tokens_per_cpu_s", "CPU"), ("tokens_per_wall_s", "wall")):
        plain, lightning, extra = overhead(results, measure)
        pairs = ", ".join(
            f"{getattr(p, measure) / getattr(q, measure) - 1:+.1%}"
            for p, q in zip(results["plain"], results["lightning"], strict=True)
        )
        print(
            f"per {unit:4s} second: plain {plain:6.0f} tokens/s, Lightning {lightning:6.0f} "
            f"tokens/s, overhead {extra:+.1%} (per round {pairs})"
        )
    extra = overhead(results, "tokens_per_cpu_s")[2]
    verdict = "ok" if extra < OVERHEAD_LIMIT else "EXCEEDED"
    print(f"overhead limit {OVERHEAD_LIMIT:.0%} (CPU time): {verdict}")
    for variant, runs in results.items():
        peak = max(r.peak_rss_mib for r in runs)
        growth = max(r.peak_rss_mib - r.start_rss_mib for r in runs)
        print(f"peak RSS {variant:9s} {peak:6.0f} MiB ({growth:+.0f} MiB during training)")


if __name__ == "__main__":
    main()
