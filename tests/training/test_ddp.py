"""DDP on 2 CPU processes (gloo) computes what one process computes on the same global batch.

"Same global batch": a `DistributedSampler` without shuffling gives rank r the examples r, r+2,
r+4, ..., so 2 ranks with batches of B together see exactly the 2B examples one process sees
in its batch of 2B. DDP averages the ranks' gradients, so the two runs agree when each rank's
loss averages over as many tokens as the other's: every example here is cropped to the same
length, making the mean of the rank losses the global batch's loss.
"""

import json
from pathlib import Path

import hydra
import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from torch.utils.data import DataLoader, DistributedSampler

from staria.data.collate import Collator
from staria.training.config import compose_net
from staria.training.tasks import StariaTask
from tests.training.runs import synthetic_datamodule

GLOBAL_BATCH = 4
STEPS = 2
SEQUENCE_LENGTH = 48  # every synthetic piece is longer, so every example has this many tokens
LR = 1e-3


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[dict]:
    """STEPS global batches of equally long examples from the real data pipeline."""
    datamodule = synthetic_datamodule(
        tmp_path_factory.mktemp("data_cache"),
        synthesis={"pieces_per_form": 2, "min_tokens": 128, "max_tokens": 256},
        val_fraction=0.0,  # training examples only: no validation split needed
        snippet_len=16,
        max_snippets=2,
        max_seq_len=SEQUENCE_LENGTH,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    items = [datamodule.datasets["train"][i] for i in range(GLOBAL_BATCH * STEPS)]
    assert {len(item["tokens"]) for item in items} == {SEQUENCE_LENGTH}
    return items


class FixedExamples(pl.LightningDataModule):
    """`examples` in order, sharded across ranks; each rank's batch is global_batch / world."""

    def __init__(self, examples: list[dict]):
        super().__init__()
        self.examples = examples

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.examples, world_size, rank, shuffle=False)
        return DataLoader(
            self.examples,
            batch_size=GLOBAL_BATCH // world_size,
            sampler=sampler,
            collate_fn=Collator(pad_id=2),
        )


class RecordSteps(pl.Callback):
    """Each rank writes its per-step losses, the first step's (synced) gradients and the final
    parameters into `folder`: with ddp_spawn the ranks are other processes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            grads = {n: p.grad.clone() for n, p in pl_module.net.named_parameters()}
            torch.save(grads, self.folder / f"grads-rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module):
        rank = trainer.global_rank
        (self.folder / f"losses-rank{rank}.json").write_text(json.dumps(self.losses))
        torch.save(pl_module.net.state_dict(), self.folder / f"params-rank{rank}.pt")


def fit(examples: list[dict], folder: Path, devices: int) -> None:
    task = StariaTask(
        tiny_staria(),
        optimizer={"lr": LR, "betas": [0.9, 0.95], "weight_decay": 0.1},
        scheduler={"warmup_steps": 1, "total_steps": STEPS, "min_lr_ratio": 0.1},
    )
    folder.mkdir()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        use_distributed_sampler=False,
        callbacks=[RecordSteps(folder)],
    )
    trainer.fit(task, datamodule=FixedExamples(examples))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(
    examples, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # spawned ranks: one thread each
    # Lightning would set MASTER_PORT in this process for good; set here, it is unset after
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    fit(examples, tmp_path / "single", devices=1)
    fit(examples, tmp_path / "ddp", devices=2)

    def losses(run: str, rank: int) -> list[float]:
        return json.loads((tmp_path / run / f"losses-rank{rank}.json").read_text())

    def load(run: str, what: str, rank: int) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / run / f"{what}-rank{rank}.pt")

    single = losses("single", 0)
    rank_losses = [losses("ddp", rank) for rank in (0, 1)]
    assert len(single) == STEPS and rank_losses[0] != rank_losses[1], "ranks saw different data"
    ddp_mean = [sum(pair) / 2 for pair in zip(*rank_losses, strict=True)]
    assert ddp_mean == pytest.approx(single, rel=1e-5)

    single_grads, ddp_grads = load("single", "grads", 0), load("ddp", "grads", 0)
    for name, grad in single_grads.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)

    single_params = load("single", "params", 0)
    initial = initial_parameters()
    moved = max((single_params[n] - v).abs().max().item() for n, v in initial.items())
    assert moved > LR / 2, "the optimizer steps changed the weights"
    for rank in (0, 1):
        for name, value in load("ddp", "params", rank).items():
            # AdamW moves a weight by up to about LR per step; the runs agree far more closely.
            # Where a gradient is near Adam's eps (1e-8) its step amplifies rounding: a 5%
            # difference in a 2e-8 gradient moves a weight by 1.2e-5 (seen with torch 2.13), so
            # the bound is LR / 20, still far below the LR-sized steps of ranks out of sync.
            torch.testing.assert_close(value, single_params[name], rtol=0, atol=LR * 5e-2, msg=name)


def tiny_staria() -> torch.nn.Module:
    torch.manual_seed(0)
    return hydra.utils.instantiate(compose_net("staria_tiny"))


def initial_parameters() -> dict[str, torch.Tensor]:
    return tiny_staria().state_dict()
