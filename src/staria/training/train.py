"""What `staria-train` runs once Hydra composed the config (`training/cli.py`): seed, build,
fit and optionally test.

Running the same command twice is safe: the run folder (`paths.run_dir`) decides whether this
resumes, starts fresh, or does nothing because the run finished (`resume.resume_point`).
"""

import contextlib
import logging
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from staria.files import write_text_atomic
from staria.models.xtransformers import compact_ids_in
from staria.training import safe_loading
from staria.training.checkpointing import HISTORY_FILE
from staria.training.config import (
    ConfigValueError,
    check_consistent,
    check_no_missing,
    check_target_arguments,
)
from staria.training.encoder_check import section_retrieval, write_encoder_check
from staria.training.preemption import Preempted, PreemptionCheckpoint
from staria.training.resume import (
    RESOLVED_CONFIG,
    ResumePoint,
    has_progress,
    load_stored_config,
    mark_finished,
    resume_point,
    run_folder_lock,
    store_wandb_run_id,
    wandb_run_id,
)
from staria.training.run_identity import config_changes, link_newest
from staria.training.tasks.base import parameter_counts

log = logging.getLogger(__name__)
# Exit status of a run stopped by a signal after its checkpoint (like sysexits' EX_TEMPFAIL:
# rerun the same command to continue).
EXIT_INTERRUPTED = 75
TRAIN_LOG = "train.log"


def config_summary(cfg: DictConfig, run_dir: Path) -> str:
    """A few lines a person reads at a run's start: the group choices, this command's
    overrides, and where the full resolved config is (`config.yaml`)."""
    lines = [f"run {run_dir}"]
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
        lines.append("  " + " ".join(f"{k}={v}" for k, v in choices.items() if v is not None))
        if hydra_cfg.overrides.task:
            lines.append("  overrides: " + " ".join(hydra_cfg.overrides.task))
    lines.append(f"  full config: {run_dir / RESOLVED_CONFIG}")
    return "\n".join(lines)


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


def changed_settings(cfg: DictConfig, run_dir: Path) -> list[str]:
    """`key: stored -> current` for each setting this command changes in a run that has
    progress (`resume.has_progress`, judged by the stored settings, which a command cannot
    move). Refused unless `resume.apply_changes`: then they apply from the resumed step."""
    stored_path = run_dir / RESOLVED_CONFIG
    stored = load_stored_config(stored_path)
    if stored is None:  # none yet, or damaged (prepare_run_dir keeps it aside)
        return []
    stored_checkpoints = stored.get("paths", {}).get("checkpoint_dir")
    if not has_progress(run_dir, stored_checkpoints):
        return []  # an earlier attempt that never saved: new settings may replace it
    changes = config_changes(stored, OmegaConf.to_container(cfg, resolve=True))
    if changes and not cfg.resume.apply_changes:
        raise RunConfigChangedError(
            f"{run_dir} was started with other settings ({stored_path}); this command "
            f"changes {len(changes)}: " + "; ".join(changes[:20]) + ". Nothing was written: "
            "rerun with the stored settings, drop hydra.run.dir (other settings name their own "
            "run folder), or apply the changes from the resumed step with "
            "resume.apply_changes=true"
        )
    return changes


class NothingTrainedError(RuntimeError):
    """`fit` returned without an optimizer step: nothing to mark finished."""


class UnusableCheckpointsError(RuntimeError):
    """Every checkpoint a run wrote fails to load; starting over is the user's choice."""


def check_resumable(point: ResumePoint, cfg: DictConfig) -> None:
    if point.unusable and not cfg.resume.start_over:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in point.skipped[:5])
        raise UnusableCheckpointsError(
            f"{cfg.paths.checkpoint_dir}: none of the {len(point.skipped)} checkpoints this run "
            f"wrote loads ({reasons}). Nothing was written: restore them, or train from step 0 "
            "with resume.start_over=true (they are kept in checkpoints/unusable-<time>/)"
        )


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Also log to `<run_dir>/train.log` (rank zero), from when the run folder may change."""
    if rank_zero_only.rank != 0:
        yield
        return
    handler = logging.FileHandler(run_dir / TRAIN_LOG)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    # Lightning's own logger does not propagate to the root one: both get the file.
    loggers = [logging.getLogger(), logging.getLogger("lightning.pytorch")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
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
    """Store the W&B id (a resume logs to the same run) and the resolved config, and link
    `runs/<name>/stage-<stage>` to this run (`run_identity.link_newest`)."""
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    store_wandb_run_id(run_dir, cfg.run_id)
    stored = run_dir / RESOLVED_CONFIG
    if stored.is_file() and load_stored_config(stored) is None:
        stored.replace(run_dir / f"{RESOLVED_CONFIG}.damaged")
        log.warning(
            "%s was damaged: kept as %s.damaged, replaced by this command's settings",
            stored,
            RESOLVED_CONFIG,
        )
    write_text_atomic(stored, OmegaConf.to_yaml(cfg, resolve=True))
    link_newest(run_dir)


def train(cfg: DictConfig) -> pl.Trainer | None:
    """Fit (resuming if the run folder has a checkpoint) and test; None if the run had finished.

    Everything is checked and built before the run folder changes: a wrong key, type or value,
    settings that differ from the run's stored ones, a run whose checkpoints are all unusable,
    or a run folder another process is training in fail with nothing written. A preempted or
    interrupted run returns its trainer with `state.status` INTERRUPTED, after `last.ckpt` was
    saved (`preemption`).
    """
    check_no_missing(cfg)
    check_target_arguments(cfg)
    check_consistent(cfg)
    run_dir = Path(cfg.paths.run_dir)
    with contextlib.ExitStack() as held:
        if rank_zero_only.rank == 0:
            held.enter_context(run_folder_lock(run_dir, create=False))
        return _train(cfg, run_dir, held)


LIGHTNING_SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def seed_for_the_run(seed: int, held: contextlib.ExitStack) -> None:
    """Seed Python, numpy, torch and the DataLoader workers. Lightning records the seed in
    `PL_GLOBAL_SEED` and `PL_SEED_WORKERS` for the run's workers; they are put back as they were
    when `held` closes, so a caller that trains again in the same process inherits nothing."""
    saved = {name: os.environ.get(name) for name in LIGHTNING_SEED_VARIABLES}

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    held.callback(restore)
    pl.seed_everything(seed, workers=True, verbose=False)


def _train(cfg: DictConfig, run_dir: Path, held: contextlib.ExitStack) -> pl.Trainer | None:
    if cfg.run_id is None:
        cfg.run_id = wandb_run_id(run_dir)
    changes = changed_settings(cfg, run_dir)
    allow_pickle = cfg.allow_pickle_runs_code
    point = resume_point(run_dir, Path(cfg.paths.checkpoint_dir), allow_pickle, cfg.run_id)
    check_resumable(point, cfg)

    seed_for_the_run(cfg.seed, held)
    datamodule = build("data", cfg.data)
    task = build("model", cfg.model)
    callbacks = instantiate_all("callbacks", cfg.callbacks)
    loggers = instantiate_all("logger", cfg.logger)
    trainer = build("trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if point.finished:  # checked above like any command, so a wrong one still fails
        rank_zero_only(link_newest)(run_dir)  # the link names the run this command means
        rank_zero_only(print)(f"run {run_dir} has finished already; nothing to do")
        return None
    refuse_foreign_checkpoints(Path(trainer.default_root_dir))
    if cfg.model.get("vocabulary") == "compact":  # before any weights load, resumed ones too
        task.use_vocabulary(compact_rows(point.checkpoint, datamodule, allow_pickle))
    if point.checkpoint is None:
        init_weights(task, cfg, allow_pickle)
    elif changes:  # applied changes must fit the weights they resume, before config.yaml moves
        check_changes_fit(task, point.checkpoint, changes, allow_pickle)
    if cfg.train:  # data that cannot train fails here, before the run folder changes
        datamodule.trainer = trainer
        datamodule.prepare_data()
        datamodule.setup("fit")
    if rank_zero_only.rank == 0 and not run_dir.is_dir():  # a new run: lock it as it appears
        held.enter_context(run_folder_lock(run_dir, create=True))
    if changes:
        keep_stored_config(run_dir)
    prepare_run_dir(cfg)
    with run_log(run_dir), OwnedWandbRuns(loggers) as wandb_runs:
        if point.checkpoint is None and cfg.init_encoder_from and cfg.train:
            check_encoder(task, datamodule, run_dir, cfg.init_encoder_from)
        return _fit(cfg, point, changes, task, datamodule, trainer, callbacks, wandb_runs)


@rank_zero_only
def check_encoder(task, datamodule, run_dir: Path, source: str) -> None:
    """Before a pretrained encoder is used: its section retrieval on the validation pieces,
    logged and written to `encoder_check.json` (`training.encoder_check`)."""
    result = section_retrieval(
        task.net.encoder, datamodule.datasets["val"].source, datamodule.sequence
    )
    log.info("%s", write_encoder_check(result, run_dir, source))


def compact_rows(checkpoint: Path | None, datamodule, allow_pickle: bool):
    """A compact vocabulary's rows: a resumed run's own (its checkpoint's, whatever its data
    holds now: `resume.apply_changes` may have changed the data), else the data's ids."""
    if checkpoint is None:
        return datamodule.used_token_ids()
    state = safe_loading.load(checkpoint, allow_pickle, map_location="cpu")
    rows = compact_ids_in(state.get("state_dict", {}))
    if rows is None:
        raise RunConfigChangedError(
            f"{checkpoint} holds every vocabulary id's rows: model.vocabulary=compact cannot "
            "resume it; resume with model.vocabulary=full"
        )
    return rows


def check_changes_fit(task, checkpoint: Path, changes: list[str], allow_pickle: bool) -> None:
    """`RunConfigChangedError` when settings applied with `resume.apply_changes` build a network
    the checkpoint's weights do not fit (a wider net, other data's compact rows): refused with
    nothing written, instead of failing in Lightning's restore after config.yaml was replaced."""
    state = safe_loading.load(checkpoint, allow_pickle, map_location="cpu")["state_dict"]
    try:
        task.load_state_dict(state)
    except RuntimeError as error:
        raise RunConfigChangedError(
            f"resume.apply_changes: the changed settings ({'; '.join(changes[:5])}) build a "
            f"network that {checkpoint} does not fit; nothing was written: {error}"
        ) from None


def init_weights(task, cfg: DictConfig, allow_pickle: bool) -> None:
    """A new run's starting weights: `init_from` (the whole net), then the parts
    `init_encoder_from` and `init_decoder_from` replace theirs."""
    if cfg.init_from:
        task.init_from(cfg.init_from, allow_pickle)
    if cfg.init_encoder_from:
        task.init_encoder_from(cfg.init_encoder_from, allow_pickle)
    if cfg.init_decoder_from:
        task.init_decoder_from(cfg.init_decoder_from, allow_pickle)


@rank_zero_only
def keep_stored_config(run_dir: Path) -> None:
    """Keep the settings a run had before a rerun changed them, as `config.until-<time>.yaml`."""
    stored = run_dir / RESOLVED_CONFIG
    shutil.copyfile(stored, run_dir / f"config.until-{time.strftime('%Y%m%d-%H%M%S')}.yaml")


@rank_zero_only
def set_aside_unusable(checkpoint_dir: Path, point: ResumePoint) -> None:
    """Move a run's unusable checkpoints and history into `unusable-<time>/` (start_over)."""
    aside = checkpoint_dir / f"unusable-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for path in [*(s.path for s in point.skipped), checkpoint_dir / HISTORY_FILE]:
        if path.exists():
            path.rename(aside / path.name)
    log.warning("starting over from step 0: the unusable checkpoints are in %s", aside)


def resume_command(run_dir: Path) -> str:
    """The command line that continues this run from any folder: this job's overrides (the
    last value of a key given twice) and its run folder."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    last = {override.split("=", 1)[0]: override for override in overrides}
    last["hydra.run.dir"] = f"hydra.run.dir={run_dir.resolve()}"
    return " ".join(["staria-train", *(shlex.quote(o) for o in last.values())])


class OwnedWandbRuns:
    """The W&B runs this job's loggers started, finished exactly once when the job ends (also
    in a multirun, where the next job would otherwise log into the same run). A finish that
    fails (a W&B service torn down with a SLURM job step) is logged and never replaces the
    job's own outcome."""

    def __init__(self, loggers: list):
        self.loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
        self.finished = False

    def __enter__(self) -> "OwnedWandbRuns":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.finish(exit_code=0 if kind is None else 1)

    def finish(self, exit_code: int, preempting: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        for logger in self.loggers:
            run = logger._experiment
            if run is None:
                continue
            try:
                if preempting:
                    run.mark_preempting()
                run.finish(exit_code=exit_code)
            except Exception as error:
                log.warning(
                    "W&B run %s did not finish cleanly: %s: %s", run.id, type(error).__name__, error
                )


def _fit(cfg, point, changes, task, datamodule, trainer, callbacks, wandb_runs) -> pl.Trainer:
    """Everything after the run folder may change: report, fit (or resume), test."""
    run_dir = Path(cfg.paths.run_dir)
    for path in point.ignored:
        log.warning("ignoring %s: not in this run's checkpoint history, never resumed from", path)
    if point.history_damaged:
        log.warning("%s is damaged: rebuilt from the checkpoints this run wrote", HISTORY_FILE)
    if point.unusable:
        set_aside_unusable(Path(cfg.paths.checkpoint_dir), point)
    else:
        for skipped in point.skipped:
            log.warning(
                "cannot resume from %s (%s); using an older one", skipped.path, skipped.reason
            )
    if changes:
        log.warning(
            "applying %d changed settings from the resumed step: %s",
            len(changes),
            "; ".join(changes),
        )
    task.apply_stage()
    for logger in trainer.loggers:
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), **parameter_counts(task.net)}
        )

    if cfg.print_config and point.checkpoint is None:  # once per run: at its first start
        rank_zero_only(print)(config_summary(cfg, run_dir))
    if cfg.train:
        if point.checkpoint is not None:
            log.info("resuming %s from %s", run_dir, point.checkpoint)
        try:
            # Checkpoints load as data (safe_loading) unless the run opted in to unpickling.
            with safe_loading.safe_globals():
                trainer.fit(
                    task,
                    datamodule=datamodule,
                    ckpt_path=point.checkpoint,
                    weights_only=not cfg.allow_pickle_runs_code,
                )
        except Preempted as stop:
            log.warning("%s; resume with: %s", stop, resume_command(run_dir))
            wandb_runs.finish(exit_code=EXIT_INTERRUPTED, preempting=True)
            preemption = next(cb for cb in callbacks if isinstance(cb, PreemptionCheckpoint))
            preemption.chain(stop.signal)  # submitit's requeue exits here
            return trainer
        if trainer.global_step == 0:
            raise NothingTrainedError(
                f"{run_dir}: fit ended without a single optimizer step (trainer.max_steps="
                f"{cfg.trainer.max_steps}); the run is not marked finished"
            )
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


def run(cfg: DictConfig) -> int:
    """`train`, then the process's exit status: 0, or `EXIT_INTERRUPTED` after a preemption
    or an interruption that saved. A refused command leaves no empty run folder."""
    try:
        trainer = train(cfg)
    except BaseException:
        remove_empty_run_dir(cfg)
        raise
    if trainer is not None and trainer.state.status == TrainerStatus.INTERRUPTED:
        return EXIT_INTERRUPTED
    return 0


@rank_zero_only
def remove_empty_run_dir(cfg: DictConfig) -> None:
    """A refused command leaves no trace: the run folder Hydra created for it, and its parents
    up to `paths.runs_dir`, go when empty."""
    with contextlib.suppress(Exception):  # an unresolvable or busy path: nothing to tidy
        folder, runs_dir = Path(cfg.paths.run_dir), Path(cfg.paths.runs_dir)
        while (folder == runs_dir or runs_dir in folder.parents) and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
