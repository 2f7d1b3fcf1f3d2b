"""Does the data loader keep up with training? Loader batches/s against tiny-Staria steps/s.

Both are measured in this run on the demo's data (`conf/data/synthetic.yaml`, generative task):
the loader's batches/s for 0 and 1 worker processes, and the training steps/s (forward,
backward, AdamW) of the tiny Staria net (`conf/model/net/staria_tiny.yaml`) over the same
batches. A ratio well above 1 means the step, not the loader, sets the pace. One torch thread.
"""

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from staria.paths import REPO_ROOT
from staria.training.config import compose_net
from staria.training.tasks.base import sequence_loss


def build_datamodule(cache_dir: Path, num_workers: int):
    config = OmegaConf.load(REPO_ROOT / "conf/data/synthetic.yaml")
    datamodule = hydra.utils.instantiate(config, cache_dir=str(cache_dir), num_workers=num_workers)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def loader_batches_per_s(datamodule, batches: int) -> float:
    """Batches/s over `batches` batches after the first (worker start-up is not counted)."""
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    started, seen = time.perf_counter(), 0
    while seen < batches:
        try:
            next(iterator)
        except StopIteration:
            iterator = iter(datamodule.train_dataloader())
            continue
        seen += 1
    return seen / (time.perf_counter() - started)


def training_steps_per_s(batches: list[dict[str, torch.Tensor]], warmup: int) -> float:
    """Steps/s of forward + backward + AdamW on the tiny Staria net, warmup steps excluded."""
    torch.manual_seed(0)
    net = hydra.utils.instantiate(compose_net("staria_tiny"))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-4)
    started = 0.0
    for index, batch in enumerate(batches):
        if index == warmup:
            started = time.perf_counter()
        logits = net(batch["snippets"], batch["snippet_mask"], batch["tokens"], batch["token_mask"])
        sequence_loss(logits, batch["tokens"], batch["loss_mask"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (len(batches) - warmup) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=60, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=12, help="training steps (incl. warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="staria-bench-loader-") as cache:
        main_process = build_datamodule(Path(cache), num_workers=0)
        batches = list(itertools.islice(main_process.train_dataloader(), args.steps))
        steps_per_s = training_steps_per_s(batches, args.warmup)
        batch_size = len(batches[0]["tokens"])
        print(f"tiny Staria training: {steps_per_s:8.2f} steps/s (batch {batch_size})")
        for workers in (0, 1):
            datamodule = main_process if workers == 0 else build_datamodule(Path(cache), workers)
            per_s = loader_batches_per_s(datamodule, args.batches)
            print(
                f"loader, {workers} worker(s):  {per_s:8.2f} batches/s = "
                f"{per_s / steps_per_s:6.1f}x the training step rate"
            )


if __name__ == "__main__":
    main()
