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
import numpy as np
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from staria.training import safe_loading

FINISHED_MARKER = "finished.json"
HISTORY_FILE = "checkpoint_history.json"
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
    ignored: list[Path] = field(default_factory=list)  # .ckpt files absent from the history


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED_MARKER).is_file()


def mark_finished(run_dir: Path, global_step: int) -> None:
    """Written after `fit` returns, so a requeue or a rerun of a finished run trains nothing."""
    write_json_atomic(
        Path(run_dir) / FINISHED_MARKER, {"global_step": global_step, "time": time.time()}
    )


def written_checkpoints(checkpoint_dir: Path) -> set[str]:
    """Names of the checkpoints the run's history says it wrote and has not removed."""
    history = Path(checkpoint_dir) / HISTORY_FILE
    if not history.is_file():
        return set()
    try:
        events = json.loads(history.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{history}: damaged ({error}); resume trusts only what it lists"
        ) from None
    names: set[str] = set()
    for event in events:
        name = Path(event["path"]).name
        if event["event"] == "written":
            names.add(name)
        elif event["event"] == "removed":
            names.discard(name)
    return names


def resume_point(
    run_dir: Path, checkpoint_dir: Path, allow_pickle_runs_code: bool = False
) -> ResumePoint:
    """Newest loadable checkpoint the run wrote: `last.ckpt` first, then the others newest
    first. Files its history does not list are ignored (`ignored`), never opened. Logs
    nothing: the caller reports once the run folder may change."""
    if is_finished(run_dir):
        return ResumePoint(finished=True)
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return ResumePoint(finished=False)
    written = written_checkpoints(checkpoint_dir)
    candidates, ignored = [], []
    for path in sorted(checkpoint_dir.glob("*.ckpt")):
        (candidates if path.name in written else ignored).append(path)
    candidates.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    candidates.sort(key=lambda p: p.name != LAST_CHECKPOINT)
    skipped = []
    for path in candidates:
        reason = checkpoint_load_error(path, allow_pickle_runs_code)
        if reason is None:
            return ResumePoint(False, path, skipped, ignored)
        skipped.append(UnloadableCheckpoint(path, reason))
    return ResumePoint(False, None, skipped, ignored)


def has_progress(run_dir: Path, stored_checkpoint_dir: Path | None) -> bool:
    """Whether the run folder holds training the run's stored settings produced: it finished,
    or its checkpoint history (where its stored config put it) lists a checkpoint."""
    folders = {Path(run_dir) / "checkpoints"}
    if stored_checkpoint_dir is not None:
        folders.add(Path(stored_checkpoint_dir))
    return is_finished(run_dir) or any((folder / HISTORY_FILE).is_file() for folder in folders)


def checkpoint_load_error(path: Path, allow_pickle_runs_code: bool = False) -> str | None:
    """Why `path` cannot be resumed from (truncated, not a checkpoint), or None if it loads.

    Loads as data only (`safe_loading`) unless `allow_pickle_runs_code`; a file that holds
    more than data is an `UnsafeCheckpointError`, raised, not skipped.
    """
    try:
        checkpoint = safe_loading.load(path, allow_pickle_runs_code, map_location="cpu", mmap=True)
    except safe_loading.UnsafeCheckpointError:
        raise
    except Exception as error:  # any failure to read means: use the previous checkpoint
        return f"{type(error).__name__}: {error}"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "no 'state_dict' entry: not a Lightning checkpoint"
    return None


def wandb_run_id(run_dir: Path) -> str:
    """The run's stored W&B id, or a new one (`store_wandb_run_id` keeps it): a resumed run
    logs to the same W&B run. Reads only."""
    id_file = Path(run_dir) / WANDB_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip()
    return uuid.uuid4().hex[:12]


def store_wandb_run_id(run_dir: Path, run_id: str) -> None:
    id_file = Path(run_dir) / WANDB_ID_FILE
    if not id_file.is_file():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)


# Settings a rerun may change: how it runs, records and prints, not what it trains. Keys whose
# name ends in "dir" are locations (they follow the working folder), never compared either.
RERUN_MAY_CHANGE = (
    "print_config",
    "train",
    "test",
    "allow_pickle_runs_code",
    "run_id",
    "paths",
    "callbacks",
    "logger",
)


def config_changes(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: stored -> current` for each setting a rerun changed (resolved configs as dicts)."""
    changes = []
    for key in sorted(set(stored) | set(current), key=str):
        full = f"{prefix}{key}"
        if (not prefix and key in RERUN_MAY_CHANGE) or str(key).endswith("dir"):
            continue
        old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{full}.")
        elif old != new:
            changes.append(f"{full}: {old!r} -> {new!r}")
    return changes


def write_json_atomic(path: Path, content: Any) -> None:
    """Write then rename in the same folder, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(content, indent=2))
    partial.replace(path)


class RngStateCallback(pl.Callback):
    """Lightning does not checkpoint RNG states; this puts torch/numpy/python RNG into each one.

    numpy's state is stored as a plain tuple (its 624 key words as a list), so a checkpoint
    loads with plain `torch.load` (weights_only) and no allowlist.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = _collect_rng_states()
        name, keys, *rest = states["numpy"]
        states["numpy"] = (name, keys.tolist(), *rest)
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            states = dict(checkpoint["rng_states"])
            name, keys, *rest = states["numpy"]
            states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), *rest)
            _set_rng_states(states)
