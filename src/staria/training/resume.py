"""Run-folder state that makes the same command safe to run twice (NeMo exp_manager behaviour).

A run folder holds `checkpoints/`, a `finished.json` marker once training completed, and the
W&B run id. `resume_point` says what a (re)started job does: start fresh, continue from the
newest checkpoint that loads, or nothing because the run is finished. The SLURM requeue path
calls the same functions, so a requeued job and a hand-resubmitted one behave alike.
"""

import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from staria.files import write_json_atomic, write_text_atomic
from staria.training import safe_loading
from staria.training.checkpointing import HISTORY_FILE, LAST_CHECKPOINT, CheckpointHistory

FINISHED_MARKER = "finished.json"
RESOLVED_CONFIG = "config.yaml"
WANDB_ID_FILE = "wandb_run_id"


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
    history_damaged: bool = False  # the history did not parse: rebuilt from the files on disk

    @property
    def unusable(self) -> bool:
        """The run wrote checkpoints, and none of them loads."""
        return self.checkpoint is None and bool(self.skipped)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED_MARKER).is_file()


def mark_finished(run_dir: Path, global_step: int) -> None:
    """Written after `fit` returns, so a requeue or a rerun of a finished run trains nothing."""
    write_json_atomic(
        Path(run_dir) / FINISHED_MARKER, {"global_step": global_step, "time": time.time()}
    )


def resume_point(
    run_dir: Path,
    checkpoint_dir: Path,
    allow_pickle_runs_code: bool = False,
    run_id: str | None = None,
) -> ResumePoint:
    """Newest loadable checkpoint the run wrote, by the step its history records (`last.ckpt`
    first at equal steps). Files its history does not list are ignored (`ignored`), never
    opened; a damaged history is rebuilt from the checkpoints whose run record names `run_id`
    (`CheckpointHistory`). Logs nothing: the caller reports once the run folder may change."""
    if is_finished(run_dir):
        return ResumePoint(finished=True)
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return ResumePoint(finished=False)
    history = CheckpointHistory(checkpoint_dir, run_id)
    written = history.written()
    candidates, ignored = [], []
    for path in sorted(checkpoint_dir.glob("*.ckpt")):
        (candidates if path.name in written else ignored).append(path)
    candidates.sort(
        key=lambda p: (written[p.name].get("step") or 0, p.name == LAST_CHECKPOINT), reverse=True
    )
    skipped = []
    for path in candidates:
        reason = checkpoint_load_error(path, allow_pickle_runs_code)
        if reason is None:
            return ResumePoint(False, path, skipped, ignored, history.is_damaged())
        skipped.append(UnloadableCheckpoint(path, reason))
    return ResumePoint(False, None, skipped, ignored, history.is_damaged())


class RunInUseError(RuntimeError):
    """Another process is training in the same run folder."""


@contextlib.contextmanager
def run_folder_lock(run_dir: Path, create: bool) -> Iterator[None]:
    """Hold an exclusive, non-blocking `flock` on the run folder itself (no file is written)
    while a run uses it; the kernel releases it when the process ends, even by SIGKILL.
    A folder that does not exist is created only with `create`, else nothing is locked.

    Raises `RunInUseError` when another process holds it."""
    run_dir = Path(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        yield
        return
    handle = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUseError(
                f"{run_dir} is in use by another staria-train; wait for it to stop, or start "
                "a new run (another `name=`)"
            ) from None
        yield
    finally:
        os.close(handle)


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


def stored_wandb_run_id(run_dir: Path) -> str | None:
    """The W&B id a run folder stores; None when absent or damaged."""
    id_file = Path(run_dir) / WANDB_ID_FILE
    if not id_file.is_file():
        return None
    run_id = id_file.read_text(errors="replace").strip()
    return run_id if re.fullmatch(r"[0-9a-z]+", run_id) else None  # a damaged file: None


def wandb_run_id(run_dir: Path) -> str:
    """The run's stored W&B id, or a new one (`store_wandb_run_id` keeps it): a resumed run
    logs to the same W&B run. Reads only."""
    return stored_wandb_run_id(run_dir) or uuid.uuid4().hex[:12]


def store_wandb_run_id(run_dir: Path, run_id: str) -> None:
    """Keep `run_id` unless the run folder already holds a valid one."""
    if stored_wandb_run_id(run_dir) is None:
        write_text_atomic(Path(run_dir) / WANDB_ID_FILE, run_id)


def load_stored_config(path: Path) -> dict | None:
    """The resolved config a run stored (`config.yaml`) as a dict; None when absent or damaged
    (not YAML, not a mapping)."""
    if not Path(path).is_file():
        return None
    try:
        stored = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception:  # any parse failure: a damaged file
        return None
    return stored if isinstance(stored, dict) else None
