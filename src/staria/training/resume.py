"""Run-folder state that makes the same command safe to run twice (NeMo exp_manager behaviour).

A run folder holds `checkpoints/`, a `finished.json` marker once training completed, and the
W&B run id. `resume_point` says what a (re)started job does: start fresh, continue from the
newest checkpoint that loads, or nothing because the run is finished. The SLURM requeue path
calls the same functions, so a requeued job and a hand-resubmitted one behave alike.
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

FINISHED_MARKER = "finished.json"
WANDB_ID_FILE = "wandb_run_id"
LAST_CHECKPOINT = "last.ckpt"


@dataclass
class UnloadableCheckpoint:
    """A checkpoint skipped on resume, with the loader's reason."""

    path: Path
    reason: str


@dataclass
class ResumePoint:
    """What a started job does: `finished`, else resume from `checkpoint` (None: start fresh)."""

    finished: bool
    checkpoint: Path | None = None
    skipped: list[UnloadableCheckpoint] = field(default_factory=list)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED_MARKER).is_file()


def mark_finished(run_dir: Path, global_step: int) -> None:
    """Written after `fit` returns, so a requeue or a rerun of a finished run trains nothing."""
    write_json_atomic(
        Path(run_dir) / FINISHED_MARKER, {"global_step": global_step, "time": time.time()}
    )


def resume_point(run_dir: Path, checkpoint_dir: Path) -> ResumePoint:
    """Newest loadable checkpoint: `last.ckpt` first, then the others newest first."""
    if is_finished(run_dir):
        return ResumePoint(finished=True)
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return ResumePoint(finished=False)
    candidates = sorted(
        checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    candidates.sort(key=lambda p: p.name != LAST_CHECKPOINT)
    skipped = []
    for path in candidates:
        reason = checkpoint_load_error(path)
        if reason is None:
            return ResumePoint(finished=False, checkpoint=path, skipped=skipped)
        skipped.append(UnloadableCheckpoint(path, reason))
    return ResumePoint(finished=False, skipped=skipped)


def checkpoint_load_error(path: Path) -> str | None:
    """Why `path` cannot be resumed from (truncated, not a checkpoint), or None if it loads."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # any failure to read means: use the previous checkpoint
        return f"{type(error).__name__}: {error}"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "no 'state_dict' entry: not a Lightning checkpoint"
    return None


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id, created once and stored so a resumed run logs to the same W&B run."""
    id_file = Path(run_dir) / WANDB_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id)
    return run_id


def write_json_atomic(path: Path, content: Any) -> None:
    """Write then rename in the same folder, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(content, indent=2))
    partial.replace(path)


class RngStateCallback(pl.Callback):
    """Lightning does not checkpoint RNG states; this puts torch/numpy/python RNG into each one."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["rng_states"] = _collect_rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])
