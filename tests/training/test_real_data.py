"""The small real-data preset trains on the shared real MIDI folder and its loss falls."""

import pytest

from staria.training.train import train
from tests.training.runs import compose_train


@pytest.mark.slow
def test_the_real_small_preset_trains_on_the_shared_midi(tmp_path, shared_midi_dir, monkeypatch):
    monkeypatch.setenv("STARIA_DATA_CACHE", str(tmp_path / "cache"))
    cfg = compose_train(
        tmp_path / "run",
        "experiment=real_small",
        "data.max_seq_len=256",
        f"data.folders=[{shared_midi_dir}]",
        "trainer.max_steps=40",
    )
    trainer = train(cfg)
    assert trainer.global_step == 40
    datamodule = trainer.datamodule
    assert len(datamodule.datasets["train"]) >= 20 and len(datamodule.datasets["val"]) >= 1
    assert float(trainer.callback_metrics["val/loss"]) < 9.7, "below uniform (9.78) already"
