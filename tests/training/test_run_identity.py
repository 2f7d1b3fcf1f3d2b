"""Run identity: the run folder is named by the settings that change training, so a changed
sweep point is a new run and the same command finds its own run again; `staria-runs` lists them."""

import json
import random

import pytest
from omegaconf import OmegaConf, open_dict

from staria.training.config import register_configs
from staria.training.resume import FINISHED_MARKER
from staria.training.run_identity import (
    RERUN_MAY_CHANGE,
    config_changes,
    link_newest,
    settings_signature,
    training_settings,
)
from staria.training.runs_table import find_runs, format_table, main, read_run
from tests.harness import SHRINK, compose_config
from tests.training.runs import run_staria_train

register_configs()

# Overrides a rerun may change (how it runs, records, prints) and ones that change training.
SAME_RUN = (
    "paths.runs_dir=/elsewhere",
    "paths.data_dir=/other/cache",
    "logger=none",
    "logger=wandb",
    "callbacks.progress.every_n_steps=7",
    "trainer.enable_progress_bar=true",
    "trainer.log_every_n_steps=3",
    "print_config=false",
    "resume.apply_changes=true",
    "run_id=abc123",
    "allow_pickle_runs_code=true",
    "data.num_workers=2",
    "data.index_workers=2",
    "model.compile=true",
    "model.net.decoder.attn_flash=true",
    "model.net.encoder.activation_checkpointing=true",
)
OTHER_RUN = (
    "model.optimizer.lr=1e-3",
    "seed=1",
    "trainer.max_steps=5",
    "data.max_seq_len=256",
    "data.batch_size=3",
    "stage=A",
    "model=baseline",
    "model/net=staria_aria_tiny",
    "name=other",
    "init_from=/some/weights.ckpt",
    "trainer.accumulate_grad_batches=2",
)


def composed(*overrides: str):
    """`train.yaml` as Hydra composes it for a job, its `hydra` node set (the resolver's view)."""
    return compose_config("train", "experiment=smoke", *overrides, hydra_node=True)


def test_changes_a_rerun_may_make_keep_the_signature_and_training_changes_do_not():
    base = settings_signature(composed())
    rng = random.Random(0)
    for _ in range(6):  # random mixes of the harmless ones still name the same run
        mix = rng.sample(SAME_RUN, 3)
        if sum(o.startswith("logger=") for o in mix) > 1:
            continue
        assert settings_signature(composed(*mix)) == base, mix
    signatures = {settings_signature(composed(override)) for override in OTHER_RUN}
    assert base not in signatures and len(signatures) == len(OTHER_RUN)


def test_training_settings_skip_what_may_change_and_every_location():
    settings = training_settings(composed())
    assert settings["model.optimizer.lr"] == 3e-4 and settings["seed"] == 0
    for key in settings:
        assert not key.endswith("dir") and "dir." not in key
        assert not any(key == k or key.startswith(f"{k}.") for k in RERUN_MAY_CHANGE), key


def test_stored_and_composed_configs_give_the_same_signature():
    cfg = composed("model.optimizer.lr=2e-4", "paths.run_dir=/runs/x")
    job = cfg.copy()
    with open_dict(job):
        del job.hydra  # as the task function sees it
    # a run's config.yaml: resolved, read back as plain YAML
    stored = OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(job, resolve=True)))
    assert settings_signature(cfg) == settings_signature(stored)
    assert settings_signature(stored) != settings_signature(OmegaConf.to_container(composed()))


def test_config_changes_name_each_changed_training_setting():
    old = OmegaConf.to_container(composed())
    new = OmegaConf.to_container(composed("model.optimizer.lr=1e-3", "logger=none"))
    assert config_changes(old, new) == ["model.optimizer.lr: 0.0003 -> 0.001"]


def test_init_from_through_a_link_is_the_file_it_points_to(tmp_path):
    for name in ("stage-A-00000001", "stage-A-00000002"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "last.ckpt").write_bytes(b"")
    link = tmp_path / "stage-A"
    signatures = []
    for name in ("stage-A-00000001", "stage-A-00000002"):
        link.unlink(missing_ok=True)
        link.symlink_to(name)
        cfg = composed(f"init_from={link}/checkpoints/last.ckpt")
        assert training_settings(cfg)["init_from"] == str(tmp_path / name / "checkpoints/last.ckpt")
        signatures.append(settings_signature(cfg))
    assert signatures[0] != signatures[1], "stage B from another stage A is another run"


def test_the_newest_link_follows_the_run_and_leaves_a_real_folder_alone(tmp_path):
    first, second = tmp_path / "stage-A-0123abcd", tmp_path / "stage-A-4567cdef"
    for folder in (first, second):
        folder.mkdir()
        link_newest(folder)
        assert (tmp_path / "stage-A").resolve() == folder
    link_newest(tmp_path / "by-hand")  # not a signature folder: no link
    assert not (tmp_path / "by").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "stage-A",
        "stage-A-0123abcd",
        "stage-A-4567cdef",
    ]
    old = tmp_path / "old"
    (old / "stage-B").mkdir(parents=True)  # a run folder from before signatures
    (old / "stage-B-89abcdef").mkdir()
    link_newest(old / "stage-B-89abcdef")
    assert not (old / "stage-B").is_symlink()


@pytest.mark.slow
def test_a_changed_sweep_point_is_a_new_run_and_the_table_lists_them(tmp_path):
    tiny = ("experiment=smoke", *SHRINK, "trainer.max_steps=2")
    env = {"STARIA_DATA_CACHE": str(tmp_path / "cache")}
    first = run_staria_train(tmp_path, "-m", *tiny, "model.optimizer.lr=1e-4,3e-4", **env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_staria_train(tmp_path, "-m", *tiny, "model.optimizer.lr=1e-3,3e-4", **env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("has finished already; nothing to do") == 1  # 3e-4 only

    sweep_dir = tmp_path / "runs" / "smoke"
    rows = {
        read_run(run).settings["model.optimizer.lr"]: read_run(run)
        for run in find_runs([sweep_dir])
    }
    assert sorted(rows) == [1e-4, 3e-4, 1e-3]
    for row in rows.values():
        assert row.status == "finished" and row.step == 2 and row.best_val_loss is not None
        assert (row.folder / FINISHED_MARKER).is_file()
        stored = OmegaConf.to_container(OmegaConf.load(row.folder / "config.yaml"))
        assert row.folder.name == f"stage-none-{settings_signature(stored)}"
        assert (
            OmegaConf.load(row.folder / "config.yaml").model.optimizer.lr
            == row.settings["model.optimizer.lr"]
        )
    # The sweep ends with the table of the name's runs: the learning rate is what differs.
    table = format_table(list(rows.values()), sweep_dir.resolve())
    assert table.splitlines()[0].split() == [
        "run",
        "status",
        "step",
        "best",
        "val/loss",
        "model.optimizer.lr",
    ]
    for line in table.splitlines():
        assert line in second.stdout
    # The newest-run link names the run the last command meant, finished or not: the second
    # sweep's last point, 3e-4, had finished in the first.
    assert (sweep_dir / "stage-none").resolve() == rows[3e-4].folder
    # The same single-run command resumes (here: finds finished) its own run.
    again = run_staria_train(tmp_path, *tiny, "model.optimizer.lr=1e-3", **env)
    assert again.returncode == 0 and f"run {rows[1e-3].folder} has finished" in again.stdout


def test_the_runs_table_shows_status_step_and_best_loss(tmp_path, capsys):
    runs = tmp_path / "runs" / "exp"
    for signature, lr, finished, events in (
        ("00000001", 1e-4, True, [("epoch=0-step=4.ckpt", 4, 2.5), ("last.ckpt", 4, None)]),
        ("00000002", 3e-4, False, [("epoch=0-step=2.ckpt", 2, 3.25), ("last.ckpt", 3, None)]),
        ("00000003", 1e-3, False, []),
    ):
        folder = runs / f"stage-none-{signature}"
        (folder / "checkpoints").mkdir(parents=True)
        config = {"name": "exp", "seed": 0, "model": {"optimizer": {"lr": lr}}}
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(config))
        history = [
            {"event": "written", "path": p, "step": s, "metric": "val/loss", "value": v}
            for p, s, v in events
        ]
        (folder / "checkpoints" / "checkpoint_history.json").write_text(json.dumps(history))
        if finished:
            (folder / FINISHED_MARKER).write_text(json.dumps({"global_step": 4}))
    (runs / "stage-none").symlink_to("stage-none-00000003")
    assert main([str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["run", "status", "step", "best", "val/loss", "model.optimizer.lr"],
        ["stage-none-00000001", "finished", "4", "2.5000", "0.0001"],
        ["stage-none-00000002", "stopped", "3", "3.2500", "0.0003"],
        ["stage-none-00000003", "no", "checkpoint", "-", "-", "0.001"],
    ]
    assert main([str(tmp_path / "absent")]) == 2
    other = tmp_path / "runs" / "other" / "stage-A-0000000a"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.yaml").write_text(OmegaConf.to_yaml({"name": "other", "seed": 1}))
    (tmp_path / "runs" / "damaged" / "stage-A-0000000b").mkdir(parents=True)
    (tmp_path / "runs" / "damaged" / "stage-A-0000000b" / "config.yaml").write_bytes(b"\xff: [")
    assert main([str(tmp_path / "runs")]) == 0
    tables = capsys.readouterr().out.split("\n\n")
    assert [table.splitlines()[0] for table in tables] == ["== damaged", "== exp", "== other"]
    assert tables[0].splitlines()[2].split()[1:3] == ["damaged", "config.yaml"]
    assert tables[2].splitlines()[1].split() == ["run", "status", "step", "best", "val/loss"]
