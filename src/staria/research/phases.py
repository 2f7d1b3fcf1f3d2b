"""Phases of a multi-step experiment, each a composed config run through the usual entrypoints.

A train phase is `staria.training.train.train(cfg)` with `conf/train.yaml` composed from an
experiment preset; a generate phase is `staria.generation.generate.generate(cfg)` with
`conf/generate.yaml`. Each phase owns a folder under the experiment's root, and a phase whose
folder holds its completion marker (`finished.json` for training, `manifest.json` for samples)
is skipped, so rerunning an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerStatus
from omegaconf import DictConfig, open_dict

from staria.data.cache import CachedSplit
from staria.data.preprocess import find_index
from staria.generation.generate import generate
from staria.generation.manifest import MANIFEST_FILE
from staria.paths import REPO_ROOT
from staria.training.checkpointing import LAST_CHECKPOINT
from staria.training.resume import is_finished
from staria.training.train import changed_settings, train

log = logging.getLogger(__name__)
CONF_DIR = REPO_ROOT / "conf"
# What the call that finished a training phase took: {"wall_s": ..., "cpu_s": ...}.
PHASE_TIME_FILE = "phase_time.json"


class PhaseError(RuntimeError):
    """A phase ended without what the next phase needs; names the phase and the missing file."""


class PhaseInterrupted(PhaseError):
    """A training phase stopped by a signal (Ctrl-C, a time limit) with its `last.ckpt` saved:
    the same command continues it."""


@dataclass(frozen=True)
class PhaseResult:
    """Where a phase's outputs are and whether this call did the work or found it done."""

    name: str
    folder: Path
    skipped: bool


def compose_config(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """`conf/<config_name>.yaml` with `overrides`, as the task function of a Hydra run sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def train_config(preset: str, run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The training config of `experiment=<preset>` running in `run_dir`."""
    return compose_config(
        "train",
        [
            f"experiment={preset}",
            f"paths.root_dir={REPO_ROOT}",
            f"paths.run_dir={run_dir}",
            *overrides,
        ],
    )


def data_splits(data: DictConfig) -> dict[str, CachedSplit]:
    """The train, val and test splits of a training config's `data` settings (made and
    indexed first if missing): what a phase of those settings trains and validates on."""
    datamodule = instantiate(data)
    datamodule.prepare_data()
    found = find_index(datamodule.sources(), datamodule.cache_dir, datamodule.index_settings)
    return {name: CachedSplit(folder) for name, folder in found.split_dirs.items()}


def run_train_phase(
    name: str, preset: str, run_dir: Path, overrides: Sequence[str] = ()
) -> PhaseResult:
    """Train `preset` in `run_dir` (resuming a partial run); skipped once `finished.json` exists,
    when the run finished with these settings (`RunConfigChangedError` listing them if not)."""
    run_dir = Path(run_dir)
    cfg = train_config(preset, run_dir, overrides)
    if is_finished(run_dir):
        changed_settings(cfg, run_dir)  # a finished run of other settings is not this phase
        log.info("phase %s: finished in %s, skipped", name, run_dir)
        return PhaseResult(name, run_dir, skipped=True)
    log.info("phase %s: training experiment=%s in %s", name, preset, run_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer = train(cfg)
    spent = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    if not is_finished(run_dir):
        if trainer is not None and trainer.state.status == TrainerStatus.INTERRUPTED:
            raise PhaseInterrupted(
                f"phase {name} was interrupted in {run_dir} (last.ckpt saved): run the same "
                "command again to continue"
            )
        raise PhaseError(f"phase {name}: {run_dir} has no finished marker after training")
    (run_dir / PHASE_TIME_FILE).write_text(json.dumps(spent) + "\n")
    return PhaseResult(name, run_dir, skipped=False)


def phase_time(run_dir: Path) -> dict[str, float] | None:
    """Wall and CPU seconds (this process, all threads) of the call that finished the training
    phase in `run_dir`; None for a run trained outside `run_train_phase`."""
    path = Path(run_dir) / PHASE_TIME_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def metrics_csv(run_dir: Path) -> list[dict[str, str]]:
    """Every row Lightning's CSVLogger wrote for a run, over all its (re)start versions."""
    rows = []
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with path.open() as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val/loss) at every validation, in step order."""
    points = {
        int(row["step"]): float(row["val/loss"])
        for row in metrics_csv(run_dir)
        if row.get("val/loss")
    }
    return sorted(points.items())


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run ends with: `checkpoints/last.ckpt`."""
    path = Path(run_dir) / "checkpoints" / LAST_CHECKPOINT
    if not path.is_file():
        raise PhaseError(f"{run_dir}: no checkpoints/{LAST_CHECKPOINT}")
    return path


def run_generate_phase(
    name: str, checkpoint: Path, out_dir: Path, overrides: Sequence[str] = ()
) -> PhaseResult:
    """Sample from `checkpoint` into `out_dir`; skipped once its `manifest.json` exists."""
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_FILE).is_file():
        log.info("phase %s: samples in %s, skipped", name, out_dir)
        return PhaseResult(name, out_dir, skipped=True)
    log.info("phase %s: sampling %s into %s", name, checkpoint, out_dir)
    cfg = compose_config(
        "generate", [f"checkpoint={checkpoint}", f"out_dir={out_dir}", "device=cpu", *overrides]
    )
    generate(cfg)
    return PhaseResult(name, out_dir, skipped=False)
