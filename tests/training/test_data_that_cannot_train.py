"""Data that cannot train fails before a run starts, naming the folder, the counts and what is
needed; the run folder stays as it was (no half-made run marked finished at step 0)."""

import shutil

import pytest

from staria.data.datamodule import NotEnoughDataError
from staria.training.train import train
from tests.harness import SHRINK
from tests.midi_oracle import SMALL_MIDI
from tests.training.runs import compose_train, run_staria_train


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STARIA_DATA_CACHE", str(tmp_path / "cache"))


def real(run_dir, folder, *overrides):
    return compose_train(
        run_dir,
        "experiment=smoke",
        "data=real",
        f"data.folders=[{folder}]",
        "data.snippet_len=32",
        "data.num_workers=0",
        *overrides,
    )


def midi_folder(tmp_path, count: int):
    folder = tmp_path / f"midi-{count}"
    folder.mkdir()
    for path in list(SMALL_MIDI.values())[:count]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("count", [0, 2])
def test_a_folder_too_small_to_train_and_validate_is_refused_before_the_run(tmp_path, count):
    folder, run_dir = midi_folder(tmp_path, count), tmp_path / "run"
    with pytest.raises(NotEnoughDataError, match=str(folder)) as error:
        train(real(run_dir, folder))
    assert "val" in str(error.value) and "data.val_fraction" in str(error.value)
    assert not run_dir.exists()


def test_the_same_small_folder_trains_with_validation_switched_off(tmp_path):
    folder = midi_folder(tmp_path, 2)
    trainer = train(
        real(tmp_path / "run", folder, "trainer.limit_val_batches=0", "trainer.max_steps=1")
    )
    assert trainer.global_step == 1


def test_the_console_names_the_folder_and_leaves_no_run_folder(tmp_path):
    empty = midi_folder(tmp_path, 0)
    run = run_staria_train(
        tmp_path,
        "experiment=smoke",
        "data=real",
        f"data.folders=[{empty}]",
        "data.num_workers=0",
        "data.snippet_len=32",
        *SHRINK,
    )
    assert run.returncode != 0
    assert "NotEnoughDataError" in run.stderr and str(empty) in run.stderr
    assert not (tmp_path / "runs").exists()
