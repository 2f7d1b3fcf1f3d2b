"""Tiny real runs for generation and evaluation tests: the composed `train.yaml` with a preset,
shrunk to one optimizer step and one validation batch on a small synthetic set, trained by the
real Lightning Trainer, so each leaves `config.yaml` and `checkpoints/last.ckpt` as a real run."""

from __future__ import annotations

from pathlib import Path

from staria.training.train import train
from tests.harness import compose_train, steps

# What these runs need beyond the one shrink (`SHRINK`, which `compose_train` applies first).
ONE_STEP = (
    *steps(1),
    "trainer.limit_val_batches=1",
    "++trainer.enable_progress_bar=false",
    "data.synthesis.pieces_per_form=4",
    "data.max_seq_len=256",
    "data.batch_size=2",
)


def train_tiny_run(root: Path, experiment: str, name: str, *overrides: str) -> Path:
    """Train `experiment` for one step under `root`; returns its `last.ckpt`."""
    run_dir = root / "runs" / name / "stage-none"
    paths = [f"name={name}", f"paths.root_dir={root}", f"data.cache_dir={root / 'cache'}"]
    train(compose_train(run_dir, f"experiment={experiment}", *ONE_STEP, *paths, *overrides))
    return run_dir / "checkpoints" / "last.ckpt"
