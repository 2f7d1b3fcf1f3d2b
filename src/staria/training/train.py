"""`staria-train`: compose the config, then seed, build, fit and optionally test. Nothing else.

Running the same command twice is safe: the run folder (`paths.run_dir`) decides whether this
resumes, starts fresh, or does nothing because the run finished (`resume.resume_point`).
"""

import logging
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
from staria.training.config import check_no_missing, register_configs
from staria.training.preemption import PreemptionCheckpoint
from staria.training.resume import mark_finished, resume_point, wandb_run_id
from staria.training.tasks.base import parameter_counts

log = logging.getLogger(__name__)
RESOLVED_CONFIG = "config.yaml"
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


def instantiate_all(group: DictConfig | None) -> list:
    """Build every entry of a callbacks/logger group; an entry may build a list of objects."""
    built = []
    for entry in (group or {}).values():
        if entry is None:
            continue
        obj = hydra.utils.instantiate(entry)
        built.extend(obj if isinstance(obj, list) else [obj])
    return built


@rank_zero_only
def prepare_run_dir(cfg: DictConfig) -> None:
    """Store the W&B id (a resume logs to the same run) and the resolved config; print it."""
    run_dir = Path(cfg.paths.run_dir)
    if cfg.run_id is None:
        cfg.run_id = wandb_run_id(run_dir)
    OmegaConf.save(cfg, run_dir / RESOLVED_CONFIG, resolve=True)
    if cfg.print_config:
        rich_print(config_tree(cfg))


def train(cfg: DictConfig) -> pl.Trainer | None:
    """Fit (resuming if the run folder has a checkpoint) and test; None if the run had finished."""
    check_no_missing(cfg)
    run_dir = Path(cfg.paths.run_dir)
    point = resume_point(run_dir, Path(cfg.paths.checkpoint_dir))
    if point.finished:
        rank_zero_only(print)(f"run {run_dir} has finished already; nothing to do")
        return None
    for skipped in point.skipped:
        log.warning("cannot resume from %s (%s); trying an older one", skipped.path, skipped.reason)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(cfg)

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    task = hydra.utils.instantiate(cfg.model)
    if point.checkpoint is None and cfg.init_from:
        task.init_from(cfg.init_from)
    callbacks = instantiate_all(cfg.callbacks)
    loggers = instantiate_all(cfg.logger)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    task.apply_stage()
    for logger in loggers:
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), **parameter_counts(task.net)}
        )

    if cfg.train:
        if point.checkpoint is not None:
            rank_zero_only(print)(f"resuming {run_dir} from {point.checkpoint}")
        # The run's own checkpoints carry RNG states and config records: trusted, full unpickling.
        trainer.fit(task, datamodule=datamodule, ckpt_path=point.checkpoint, weights_only=False)
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
