"""Runs that survive interruptions exactly: each kind of fault of docs/training.md ("Faults and
resume"), tried on the real `train` with tiny settings, compared with an uninterrupted run.

A kill is `SimulatedKill` raised from a hook: the run stops there and none of Staria's code
runs after it, which is what SIGKILL leaves on disk (the randomised test in
`test_random_kills.py` uses real SIGKILLs).
"""

import csv
import json
import os
import shutil

import lightning.pytorch as pl
import pytest
import torch
import wandb
from lightning.pytorch.trainer.states import TrainerStatus

from staria import files
from staria.training.checkpointing import HISTORY_FILE, LAST_CHECKPOINT, CheckpointHistory
from staria.training.resume import (
    FINISHED_MARKER,
    RunInUseError,
    resume_point,
    run_folder_lock,
)
from staria.training.run_identity import config_changes
from staria.training.train import (
    RunConfigChangedError,
    UnusableCheckpointsError,
    train,
)
from tests.training.runs import (
    KillAt,
    SignalAtStep,
    SigtermAfterLightningsHandler,
    SimulatedKill,
    add_callback,
    preempt_at_step,
    smoke,
)

SIX_STEPS = ("trainer.max_steps=6",)


pytestmark = pytest.mark.usefixtures("module_data_cache")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted six-step smoke run (validation and last.ckpt every 2 steps, top-2)."""
    run_dir = tmp_path_factory.mktemp("straight")
    return run_dir, weights(train(smoke(run_dir, *SIX_STEPS)))


def weights(trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.lightning_module.net.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


def folder(run_dir) -> set[str]:
    """Every file in the checkpoint folder, hidden ones too."""
    return {p.name for p in (run_dir / "checkpoints").iterdir() if p.is_file()}


def last_step(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / LAST_CHECKPOINT)["global_step"]


def assert_matches_straight(run_dir, trainer, straight) -> None:
    """Same final weights, step and checkpoint folder as the uninterrupted run."""
    straight_dir, straight_weights = straight
    assert trainer.global_step == 6 and last_step(run_dir) == 6
    assert_same_weights(straight_weights, weights(trainer))
    assert folder(run_dir) == folder(straight_dir)


def test_the_uninterrupted_run_keeps_top_2_last_and_history(straight):
    run_dir, _ = straight
    names = folder(run_dir)
    assert names == {LAST_CHECKPOINT, HISTORY_FILE, *(n for n in names if n.startswith("epoch"))}
    assert len(names) == 4 and last_step(run_dir) == 6


def test_preemption_inside_an_accumulation_window_saves_at_the_window_end(tmp_path):
    steps = ("trainer.max_steps=4", "trainer.accumulate_grad_batches=2")
    reference = weights(train(smoke(tmp_path / "straight", *steps)))
    for batch in (0, 5):  # the first micro-batch of step 1; the second of step 3
        run_dir = tmp_path / f"signal-at-batch-{batch}"
        cfg = smoke(run_dir, *steps)
        add_callback(cfg, "signal", SignalAtStep, batch=batch)
        stopped = train(cfg)
        assert stopped.state.status == TrainerStatus.INTERRUPTED
        assert last_step(run_dir) == batch // 2 + 1, "saved once the window's step completed"
        resumed = train(smoke(run_dir, *steps))
        assert resumed.global_step == 4
        assert_same_weights(reference, weights(resumed))


def test_validation_checkpoints_and_logging_count_optimizer_steps_under_accumulation(tmp_path):
    cfg = smoke(tmp_path, "trainer.max_steps=4", "trainer.accumulate_grad_batches=3", "logger=csv")
    train(cfg)
    events = CheckpointHistory(tmp_path / "checkpoints").events()
    assert sorted({e["step"] for e in events if e["metric"] == "val/loss"}) == [2, 4]
    assert sorted({e["step"] for e in events if e["path"].endswith(LAST_CHECKPOINT)}) == [2, 4]
    (metrics,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["step"]) for r in rows if r["train/loss"]] == [0, 1, 2, 3]
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [1, 3]  # after steps 2 and 4


def test_a_preempted_then_finished_run_has_one_current_last_checkpoint(tmp_path, straight):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    assert train(cfg).global_step == 3 and last_step(tmp_path) == 3
    resumed = train(smoke(tmp_path, *SIX_STEPS))
    assert_matches_straight(tmp_path, resumed, straight)


@pytest.mark.parametrize(
    "hook,step",
    [
        ("on_train_batch_start", 3),  # between two saves: top-k must not leak
        ("on_validation_batch_start", 4),  # during a validation: it is redone
        ("on_validation_batch_start", 6),  # during the final validation
        ("on_save_checkpoint", 4),  # while a checkpoint is being written
    ],
)
def test_a_killed_run_rerun_to_the_end_matches_the_uninterrupted_one(
    tmp_path, straight, hook, step
):
    cfg = smoke(tmp_path, *SIX_STEPS)
    add_callback(cfg, "kill", KillAt, hook=hook, step=step)
    with pytest.raises(SimulatedKill):
        train(cfg)
    assert not (tmp_path / FINISHED_MARKER).exists()
    resumed = train(smoke(tmp_path, *SIX_STEPS))
    assert_matches_straight(tmp_path, resumed, straight)


def test_a_partial_write_left_by_a_kill_is_removed_and_never_resumed_from(tmp_path, straight):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    train(cfg)
    partial = tmp_path / "checkpoints" / f".{LAST_CHECKPOINT}.partial"
    partial.write_bytes(b"half a checkpoint")
    assert resume_point(tmp_path, tmp_path / "checkpoints").checkpoint.name == LAST_CHECKPOINT
    resumed = train(smoke(tmp_path, *SIX_STEPS))
    assert_matches_straight(tmp_path, resumed, straight)


def test_changed_settings_are_refused_or_applied_from_the_resumed_step(tmp_path):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    train(cfg)
    before = folder(tmp_path)
    with pytest.raises(RunConfigChangedError, match=r"model.optimizer.lr: 0.0003 -> 0.01"):
        train(smoke(tmp_path, *SIX_STEPS, "model.optimizer.lr=0.01"))
    assert folder(tmp_path) == before

    resumed = train(
        smoke(tmp_path, *SIX_STEPS, "model.optimizer.lr=0.01", "resume.apply_changes=true")
    )
    optimizer = resumed.optimizers[0]
    scheduler = resumed.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs == [0.01]
    assert optimizer.param_groups[0]["initial_lr"] == 0.01
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * scheduler.lr_lambdas[0](6))
    assert "lr: 0.01" in (tmp_path / "config.yaml").read_text()
    kept = list(tmp_path.glob("config.until-*.yaml"))
    assert len(kept) == 1 and "lr: 0.0003" in kept[0].read_text()


def test_applied_changes_that_do_not_fit_the_weights_are_refused_writing_nothing(tmp_path):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    train(cfg)
    before = folder(tmp_path)
    wider = ["model.net.decoder.dim=96", "model.net.decoder.context_dim=64"]
    with pytest.raises(RunConfigChangedError, match=r"does not fit.*nothing was written"):
        train(smoke(tmp_path, *SIX_STEPS, *wider, "resume.apply_changes=true"))
    assert folder(tmp_path) == before  # config.yaml and the checkpoints as they were
    assert train(smoke(tmp_path, *SIX_STEPS)).global_step == 6  # the run still resumes


def test_a_resume_with_unchanged_settings_keeps_the_optimizer_exactly(tmp_path, straight):
    # on_train_start re-applies the settings on every resume; unchanged, it must be a no-op
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 4)
    train(cfg)
    assert_matches_straight(tmp_path, train(smoke(tmp_path, *SIX_STEPS)), straight)


def test_a_damaged_history_is_rebuilt_from_the_checkpoints_on_disk(tmp_path, straight):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    train(cfg)
    history = tmp_path / "checkpoints" / HISTORY_FILE
    damaged = history.read_text()[:-20]
    history.write_text(damaged)
    assert resume_point(tmp_path, tmp_path / "checkpoints", run_id=cfg.run_id).history_damaged
    resumed = train(smoke(tmp_path, *SIX_STEPS))
    kept = tmp_path / "checkpoints" / f"{HISTORY_FILE}.damaged"
    assert kept.read_text() == damaged, "the damaged file is kept, not lost"
    kept.unlink()
    assert_matches_straight(tmp_path, resumed, straight)
    json.loads(history.read_text())  # a valid history again


def test_a_checkpoint_of_another_run_does_not_enter_a_rebuilt_history(tmp_path):
    cfg = smoke(tmp_path / "a", "trainer.max_steps=2")
    train(cfg)
    other = smoke(tmp_path / "b", "trainer.max_steps=2")
    train(other)
    checkpoints = tmp_path / "a" / "checkpoints"
    (checkpoints / "foreign.ckpt").write_bytes(
        (tmp_path / "b" / "checkpoints" / LAST_CHECKPOINT).read_bytes()
    )
    rebuilt = CheckpointHistory(checkpoints, cfg.run_id).rebuilt()
    names = {os.path.basename(e["path"]) for e in rebuilt}
    assert LAST_CHECKPOINT in names and "foreign.ckpt" not in names


def test_all_checkpoints_unusable_stops_unless_starting_over_is_chosen(tmp_path, straight):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 4)
    train(cfg)
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        path.write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UnusableCheckpointsError, match=r"resume\.start_over=true"):
        train(smoke(tmp_path, *SIX_STEPS))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    started_over = train(smoke(tmp_path, *SIX_STEPS, "resume.start_over=true"))
    assert_matches_straight(tmp_path, started_over, straight)
    (aside,) = (tmp_path / "checkpoints").glob("unusable-*")
    assert {p.name for p in aside.iterdir()} == {
        p.name for p in before if p.parent.name == "checkpoints"
    }


def test_ctrl_c_saves_at_the_next_step_like_a_preemption(tmp_path, straight):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2, signal_name="SIGINT")
    stopped = train(cfg)
    assert stopped.state.status == TrainerStatus.INTERRUPTED
    assert last_step(tmp_path) == 3
    assert_matches_straight(tmp_path, train(smoke(tmp_path, *SIX_STEPS)), straight)


def test_a_sigterm_before_training_starts_still_saves_at_the_first_step(tmp_path, straight):
    cfg = smoke(tmp_path, *SIX_STEPS)
    add_callback(cfg, "sigterm", SigtermAfterLightningsHandler)
    stopped = train(cfg)
    assert stopped.state.status == TrainerStatus.INTERRUPTED and last_step(tmp_path) == 1
    assert_matches_straight(tmp_path, train(smoke(tmp_path, *SIX_STEPS)), straight)


def test_each_job_in_one_process_owns_and_finishes_its_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_ids = []
    for seed in (0, 1):  # what a local `-m seed=0,1` does: two jobs, one process
        run_dir = tmp_path / str(seed)
        cfg = smoke(run_dir, "trainer.max_steps=2", f"seed={seed}", "logger=wandb")
        train(cfg)
        assert wandb.run is None, "the job finished its W&B run"
        run_ids.append(cfg.run_id)
        assert list((run_dir / "wandb").glob(f"offline-run-*-{cfg.run_id}"))
    assert run_ids[0] != run_ids[1]


def test_a_damaged_config_or_wandb_id_is_kept_aside_and_the_run_resumes(tmp_path, straight):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    train(cfg)
    stored = tmp_path / "config.yaml"
    damaged = stored.read_text()[:37] + "\n  - [unclosed"
    stored.write_text(damaged)
    (tmp_path / "wandb_run_id").write_text("")  # a kill while an older version wrote it
    resumed = train(smoke(tmp_path, *SIX_STEPS))
    assert (tmp_path / "config.yaml.damaged").read_text() == damaged
    assert "max_steps: 6" in stored.read_text()
    assert len((tmp_path / "wandb_run_id").read_text().strip()) == 12
    assert_matches_straight(tmp_path, resumed, straight)


def test_a_second_run_in_a_folder_in_use_is_refused_and_writes_nothing(tmp_path):
    cfg = smoke(tmp_path, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    train(cfg)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    in_use = pytest.raises(RunInUseError, match="in use by another staria-train")
    with run_folder_lock(tmp_path, create=False), in_use:  # what a running staria-train holds
        train(smoke(tmp_path, *SIX_STEPS))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert train(smoke(tmp_path, *SIX_STEPS)).global_step == 6  # free again


@pytest.mark.parametrize("step", [1, 3, 5])  # each step's boundary (2, 4, 6) validates
def test_a_signal_at_a_step_that_validates_stops_before_it_and_the_validation_happens(
    tmp_path, straight, step
):
    cfg = smoke(tmp_path, *SIX_STEPS, "callbacks.checkpointing.save_top_k=3")
    preempt_at_step(cfg, step)
    stopped = train(cfg)
    assert stopped.state.status == TrainerStatus.INTERRUPTED
    events = CheckpointHistory(tmp_path / "checkpoints").events()
    assert all(e["step"] < step + 1 for e in events), "nothing saved at the validating step"
    resumed = train(smoke(tmp_path, *SIX_STEPS, "callbacks.checkpointing.save_top_k=3"))
    validated = {
        e["step"]
        for e in CheckpointHistory(tmp_path / "checkpoints").events()
        if e["metric"] == "val/loss"
    }
    assert validated == {2, 4, 6}
    assert_same_weights(straight[1], weights(resumed))


def test_a_kill_before_the_final_last_checkpoint_lands_is_repaired_by_the_rerun(
    tmp_path, straight, monkeypatch
):
    real_replace, renames = files.replace_atomically, []

    def replace(partial, path):
        renames.append(path.name)
        if renames.count(LAST_CHECKPOINT) == 3:  # the copy after step 6's top-k file
            raise SimulatedKill("before the final last.ckpt rename")
        real_replace(partial, path)

    monkeypatch.setattr(files, "replace_atomically", replace)
    with pytest.raises(SimulatedKill):
        train(smoke(tmp_path, *SIX_STEPS))
    monkeypatch.setattr(files, "replace_atomically", real_replace)
    assert (tmp_path / "checkpoints" / f".{LAST_CHECKPOINT}.partial").exists()
    resumed = train(smoke(tmp_path, *SIX_STEPS))  # resumes at step 6: nothing left to train
    assert_matches_straight(tmp_path, resumed, straight)


@pytest.mark.parametrize("how", [shutil.move, shutil.copytree])
def test_a_moved_or_copied_run_folder_keeps_its_own_top_k(tmp_path, straight, how):
    original, elsewhere = tmp_path / "original", tmp_path / "elsewhere"
    cfg = smoke(original, *SIX_STEPS)
    preempt_at_step(cfg, 2)
    train(cfg)
    before = {p.name: p.read_bytes() for p in (original / "checkpoints").glob("*.ckpt")}
    how(original, elsewhere)
    resumed = train(smoke(elsewhere, *SIX_STEPS))
    assert_matches_straight(elsewhere, resumed, straight)
    if original.exists():  # the copy's pruning never reaches into the original
        after = {p.name: p.read_bytes() for p in (original / "checkpoints").glob("*.ckpt")}
        assert after == before


def test_a_resume_after_the_first_epoch_with_dataloader_workers_is_exact(tmp_path):
    # 12 steps make an epoch here; the signal during step 13 saves at 13, in epoch 1
    steps = ("trainer.max_steps=16", "data.num_workers=2")
    reference = weights(train(smoke(tmp_path / "straight", *steps)))
    cfg = smoke(tmp_path / "run", *steps)
    preempt_at_step(cfg, 12)
    stopped = train(cfg)
    assert stopped.current_epoch == 1 and last_step(tmp_path / "run") == 13
    assert_same_weights(reference, weights(train(smoke(tmp_path / "run", *steps))))


def test_how_a_run_prints_may_change_on_a_rerun_but_not_what_it_trains():
    stored = {
        "trainer": {"enable_progress_bar": True, "log_every_n_steps": 5, "max_steps": 6},
        "print_config": True,
    }
    rerun = {
        "trainer": {"enable_progress_bar": False, "log_every_n_steps": 1, "max_steps": 8},
        "print_config": False,
    }
    assert config_changes(stored, rerun) == ["trainer.max_steps: 6 -> 8"]
