"""`logger=wandb` offline: the stored run id names the W&B run, the config and parameter counts
are in its transaction log, and a preempted run resumed by rerunning the command continues it.

The log (`run-<id>.wandb`, what `wandb sync` uploads) is W&B's LevelDB-style record log of
`wandb_internal_pb2.Record` protobufs; wandb 0.31 ships no Python reader, so `wandb_records`
reads the framing and lets wandb's own protobuf classes parse the records.
"""

import json
import struct
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

from staria.training.resume import FINISHED_MARKER, WANDB_ID_FILE
from staria.training.runs_table import find_runs, read_run
from staria.training.train import train
from tests.training.runs import preempt_at_step, run_staria_train, smoke

BLOCK_SIZE, HEADER_SIZE = 32768, 7  # the log's block and record-header sizes
FULL, LAST = 1, 4  # record types that end a (possibly split) record


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("STARIA_DATA_CACHE", str(tmp_path / "data_cache"))


def run_training(cfg) -> pl.Trainer:
    """One `staria-train` run; finishing W&B is what process exit does in a real run."""
    try:
        return train(cfg)
    finally:
        wandb.finish()


def finished_log(run_folder: Path, run_id: str) -> list[wandb_internal_pb2.Record]:
    """The run's records once its `exit` record is written (`finish` returns before that)."""
    path = run_folder / f"run-{run_id}.wandb"
    deadline = time.monotonic() + 30
    while True:
        records = wandb_records(path)
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after 30 s"
        time.sleep(0.2)


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, offset = [], b"", HEADER_SIZE
    while offset + HEADER_SIZE <= len(data):
        left_in_block = BLOCK_SIZE - offset % BLOCK_SIZE
        if left_in_block < HEADER_SIZE:  # a block's tail too short for a header is padding
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER_SIZE])
        if offset + HEADER_SIZE + length > len(data):  # still being written
            break
        pending += data[offset + HEADER_SIZE : offset + HEADER_SIZE + length]
        offset += HEADER_SIZE + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def logged(records: list, kind: str) -> list[dict]:
    """The key -> value items of every `config` or `history` record."""
    items = []
    for record in records:
        if record.WhichOneof("record_type") == kind:
            entries = record.config.update if kind == "config" else record.history.item
            items.append(
                {
                    "/".join(entry.nested_key) or entry.key: json.loads(entry.value_json)
                    for entry in entries
                }
            )
    return items


def test_offline_wandb_run_keeps_its_stored_id_config_and_counts_across_a_resume(tmp_path):
    run_dir = tmp_path / "run"
    cfg = smoke(run_dir, "logger=wandb")
    preempt_at_step(cfg, 2)  # saved at step 3 (step 2 validates: no save there)
    assert run_training(cfg).global_step == 3
    assert not (run_dir / FINISHED_MARKER).exists()

    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    (first,) = (run_dir / "wandb").glob("offline-run-*")
    assert first.name.endswith(f"-{run_id}")
    records = finished_log(first, run_id)
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run_record.run_id == run_id
    config = logged(records, "config")[0]  # train()'s; Lightning then adds the data module's
    assert config["run_id"] == run_id and config["name"] == "smoke"
    assert config["model"]["_target_"] == "staria.training.tasks.StariaTask"
    assert config["trainer"]["max_steps"] == 4
    assert config["params/all/total"] == config["params/all/trainable"] > 1_000_000
    assert (
        config["params/all/total"]
        == config["params/encoder/total"] + config["params/decoder/total"]
    )
    history = logged(records, "history")
    assert {"train/loss", "train/lr", "train/grad_norm"} <= set().union(*history)

    resumed = run_training(smoke(run_dir, "logger=wandb"))
    assert resumed.global_step == 4 and (run_dir / FINISHED_MARKER).exists()
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == run_id
    second = [p for p in (run_dir / "wandb").glob("offline-run-*") if p != first]
    assert len(second) == 1 and second[0].name.endswith(f"-{run_id}")
    records = finished_log(second[0], run_id)
    assert [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"] == [run_id]
    steps = [h["trainer/global_step"] for h in logged(records, "history") if "train/loss" in h]
    assert steps and min(steps) >= 3, "the resumed run logs from the step it resumed at"


@pytest.mark.slow
def test_each_job_of_a_local_multirun_owns_its_wandb_run(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run = run_staria_train(
        tmp_path,
        "-m",
        "experiment=smoke",
        "logger=wandb",
        "seed=0,1",
        "trainer.max_steps=2",
        "data.max_seq_len=128",
        "print_config=false",
        f"hydra.sweep.dir={sweep_dir}",
        timeout_s=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    run_ids = []
    job_dirs = {read_run(run).settings["seed"]: run for run in find_runs([sweep_dir])}
    assert sorted(job_dirs) == [0, 1]
    for seed, job_dir in job_dirs.items():
        run_id = (job_dir / WANDB_ID_FILE).read_text().strip()
        (folder,) = (job_dir / "wandb").glob("offline-run-*")  # its own run, one
        assert folder.name.endswith(f"-{run_id}")
        records = finished_log(folder, run_id)
        assert [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"] == [run_id]
        assert logged(records, "config")[0]["seed"] == seed
        run_ids.append(run_id)
    assert run_ids[0] != run_ids[1]


WANDB_SAMPLES = (
    "callbacks.wandb_samples={_target_: staria.evaluation.wandb_samples.WandbSamples, "
    "num_samples: 2, max_length: 48, audio_seconds: 1.0}"
)


def test_each_validation_logs_listenable_samples_without_changing_training(tmp_path):
    plain = run_training(smoke(tmp_path / "plain", "logger=wandb"))
    with_samples = run_training(smoke(tmp_path / "run", WANDB_SAMPLES, "logger=wandb"))
    # Sampling draws from a forked RNG: training is bit-for-bit the same.
    for a, b in zip(
        plain.lightning_module.net.parameters(),
        with_samples.lightning_module.net.parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)
    run_id = (tmp_path / "run" / WANDB_ID_FILE).read_text().strip()
    (folder,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    history = logged(finished_log(folder, run_id), "history")
    samples = [h for h in history if any(k.startswith("val_samples/") for k in h)]
    assert len(samples) == 2  # smoke validates at steps 2 and 4
    for logged_samples in samples:
        rolls = {  # nested keys: <key>/_type, <key>/path, ...
            k.removesuffix("/_type")
            for k, v in logged_samples.items()
            if k.startswith("val_samples/piano_roll/") and k.endswith("/_type")
        }
        assert rolls == {"val_samples/piano_roll/sample_000", "val_samples/piano_roll/sample_001"}
        assert logged_samples["val_samples/samples/_type"] == "table-file"
    media = folder / "files" / "media"
    assert len(list(media.rglob("*.png"))) >= 4  # audio only for samples with notes
