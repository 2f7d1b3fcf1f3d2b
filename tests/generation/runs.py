"""Tiny real runs for generation and evaluation tests: the composed `train.yaml` with a preset,
shrunk to one optimizer step and one validation batch on a small synthetic set, trained by the
real Lightning Trainer, so each leaves `config.yaml` and `checkpoints/last.ckpt` as a real run."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from staria.paths import REPO_ROOT
from staria.training.train import train

SHRINK = [
    "trainer.max_steps=1",
    "trainer.val_check_interval=1",
    "trainer.limit_val_batches=1",
    "++trainer.enable_progress_bar=false",
    "logger=none",
    "print_config=false",
    "data.synthesis.pieces_per_form=4",
    "data.max_seq_len=256",
    "data.batch_size=2",
    "callbacks.checkpointing.last_every_n_steps=1",
]


def train_tiny_run(root: Path, experiment: str, name: str, *overrides: str) -> Path:
    """Train `experiment` for one step under `root`; returns its `last.ckpt`."""
    run_dir = root / "runs" / name / "stage-none"
    paths = [
        f"name={name}",
        f"paths.root_dir={root}",
        f"paths.run_dir={run_dir}",
        f"data.cache_dir={root / 'cache'}",
    ]
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}", *SHRINK, *paths, *overrides])
    train(cfg)
    return run_dir / "checkpoints" / "last.ckpt"
