"""`staria-train`: compose the config, then seed, build, fit and optionally test. Nothing else.

Running the same command twice is safe: the run folder (`paths.run_dir`) decides whether this
resumes, starts fresh, or does nothing because the run finished (`resume.resume_point`).
"""

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich import print as rich_print
from rich.syntax import Syntax
from rich.tree import Tree

from staria.paths import REPO_ROOT
from staria.training import safe_loading
from staria.training.config import (
    ConfigValueError,
    check_no_missing,
    check_target_arguments,
    register_configs,
)
from staria.training.preemption import PreemptionCheckpoint
from staria.training.resume import (
    config_changes,
    has_progress,
    mark_finished,
    resume_point,
    store_wandb_run_id,
    wandb_run_id,
)
from staria.training.tasks.base import parameter_counts

log = logging.getLogger(__name__)
RESOLVED_CONFIG = "config.yaml"
TRAIN_LOG = "train.log"
# Absolute, so the installed console script finds it from any working directory.
CONFIG_DIR = str(REPO_ROOT / "conf")

register_configs()


def config_tree(cfg: DictConfig) -> Tree:
    """The resolved config as a rich tree, one branch per top-level group."""
    tree = Tree("config")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(text, "yaml"))
    return tree


class RunConfigChangedError(ValueError):
    """A rerun of a run folder whose command changed settings the run was started with."""


class ForeignCheckpointError(RuntimeError):
    """A checkpoint in the run folder that the run did not write and Lightning would load."""


def build(group: str, node: DictConfig | None, **kwargs):
    """Instantiate one config group; any error names the group and keeps the cause's words."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as error:
        cause = error.__cause__ or error
        raise ConfigValueError(f"in `{group}`: {type(cause).__name__}: {cause}") from error


def instantiate_all(group: str, node: DictConfig | None) -> list:
    """Build every entry of a callbacks/logger group; an entry may build a list of objects."""
    built = []
    for name, entry in (node or {}).items():
        if entry is None:
            continue
        obj = build(f"{group}.{name}", entry)
        built.extend(obj if isinstance(obj, list) else [obj])
    return built


def check_unchanged(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a rerun whose settings differ from those a run with progress was started with
    (`resume.has_progress`, judged by the stored settings, which a command cannot move)."""
    stored_path = run_dir / RESOLVED_CONFIG
    if not stored_path.is_file():
        return
    stored = OmegaConf.to_container(OmegaConf.load(stored_path), resolve=True)
    stored_checkpoints = stored.get("paths", {}).get("checkpoint_dir")
    if not has_progress(run_dir, stored_checkpoints):
        return  # an earlier attempt that never saved: new settings may replace it
    changes = config_changes(stored, OmegaConf.to_container(cfg, resolve=True))
    if changes:
        raise RunConfigChangedError(
            f"{run_dir} was started with other settings ({stored_path}); this command "
            f"changes {len(changes)}: " + "; ".join(changes[:20]) + ". Nothing was written: "
            "rerun with the stored settings, or start a new run (another `name=`)"
        )


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Also log to `<run_dir>/train.log` (rank zero), from when the run folder may change."""
    if rank_zero_only.rank != 0:
        yield
        return
    handler = logging.FileHandler(run_dir / TRAIN_LOG)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def refuse_foreign_checkpoints(folder: Path) -> None:
    """Stop if `folder` holds Lightning "HPC" checkpoints: Staria never writes them, and under
    SLURM Lightning would resume from one when no checkpoint path is given."""
    foreign = sorted(folder.glob("hpc_ckpt_*.ckpt"))
    if foreign:
        raise ForeignCheckpointError(
            f"{foreign[0]}: a checkpoint this run did not write, which Lightning would resume "
            "from under SLURM; move it away (resume reads only checkpoints in the history)"
        )


@rank_zero_only
def prepare_run_dir(cfg: DictConfig) -> None:
    """Store the W&B id (a resume logs to the same run) and the resolved config; print it."""
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    store_wandb_run_id(run_dir, cfg.run_id)
    OmegaConf.save(cfg, run_dir / RESOLVED_CONFIG, resolve=True)
    if cfg.print_config:
        rich_print(config_tree(cfg))


def train(cfg: DictConfig) -> pl.Trainer | None:
    """Fit (resuming if the run folder has a checkpoint) and test; None if the run had finished.

    Everything is checked and built before the run folder changes: a wrong key, type or value,
    or settings that differ from the run's stored ones, fail with nothing written.
    """
    check_no_missing(cfg)
    check_target_arguments(cfg)
    run_dir = Path(cfg.paths.run_dir)
    if cfg.run_id is None:
        cfg.run_id = wandb_run_id(run_dir)
    check_unchanged(cfg, run_dir)
    allow_pickle = cfg.allow_pickle_runs_code
    point = resume_point(run_dir, Path(cfg.paths.checkpoint_dir), allow_pickle)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build("data", cfg.data)
    task = build("model", cfg.model)
    callbacks = instantiate_all("callbacks", cfg.callbacks)
    loggers = instantiate_all("logger", cfg.logger)
    trainer = build("trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if point.finished:  # checked above like any command, so a wrong one still fails
        rank_zero_only(print)(f"run {run_dir} has finished already; nothing to do")
        return None
    refuse_foreign_checkpoints(Path(trainer.default_root_dir))
    if point.checkpoint is None and cfg.init_from:
        task.init_from(cfg.init_from, allow_pickle)
    prepare_run_dir(cfg)
    with run_log(run_dir):
        return _fit(cfg, point, task, datamodule, trainer, callbacks, loggers)


def _fit(cfg, point, task, datamodule, trainer, callbacks, loggers) -> pl.Trainer:
    """Everything after the run folder may change: report, fit (or resume), test."""
    run_dir = Path(cfg.paths.run_dir)
    for path in point.ignored:
        log.warning("ignoring %s: not in this run's checkpoint history, never resumed from", path)
    for skipped in point.skipped:
        log.warning("cannot resume from %s (%s); trying an older one", skipped.path, skipped.reason)
    task.apply_stage()
    for logger in loggers:
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), **parameter_counts(task.net)}
        )

    if cfg.train:
        if point.checkpoint is not None:
            rank_zero_only(print)(f"resuming {run_dir} from {point.checkpoint}")
        # Checkpoints load as data (safe_loading) unless the run opted in to unpickling.
        with safe_loading.safe_globals():
            trainer.fit(
                task,
                datamodule=datamodule,
                ckpt_path=point.checkpoint,
                weights_only=not cfg.allow_pickle_runs_code,
            )
        preempted = any(isinstance(cb, PreemptionCheckpoint) and cb.preempted for cb in callbacks)
        if preempted:
            rank_zero_only(print)(f"preempted at step {trainer.global_step}; rerun to resume")
            return trainer
        if trainer.is_global_zero:
            mark_finished(run_dir, trainer.global_step)
        val_loss = trainer.callback_metrics.get("val/loss")
        if val_loss is not None:
            rank_zero_only(print)(
                f"{cfg.name}: val/loss {float(val_loss):.4f} at step {trainer.global_step}"
            )
    if cfg.test:
        trainer.test(task, datamodule=datamodule)
    return trainer


class HydraConfigForLaunchers(Callback):
    """Make `${hydra:...}` resolvable while a multirun launches its jobs (hydra#1786).

    Hydra sets its runtime config per job, but a launcher resolves `hydra.sweep.dir` and its
    own keys before any job starts; the run-folder layout (`runs/<name>/stage-<stage>`) goes
    through `${hydra:...}` in `name` and `paths`, which the task needs too. A job sets its own.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
